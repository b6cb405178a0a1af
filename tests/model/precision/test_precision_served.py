"""Issue acceptance through the real daemon: the gate refuses a precision, the model serves at
the next one, and GetModel shows the measured figures."""
from __future__ import annotations

import pytest

from edgeinfer.config import parse_config
from edgeinfer_client import Client

from testkit.precision_data import model_table


@pytest.fixture(scope="module")
def served(classifier_onnx, centerface_onnx, datasets, variant_cache, start_daemon):
    cfg = parse_config({"cache": {"dir": str(variant_cache)}, "models": [
        dict(model_table("imagenet", classifier_onnx, datasets), backends=["onnxruntime"]),
        dict(model_table("faces", centerface_onnx, datasets), backends=["onnxruntime"]),
    ]}, source="test", base_dir=datasets["root"])
    return start_daemon(cfg)


@pytest.mark.slow
def test_int8_refused_by_the_gate_then_fp16_serves(served, media):
    with Client(served.address, timeout=60) as c:
        m = c.get_model("imagenet")
        assert m.state == "ready" and m.precision == "fp16", (m.state, m.state_reason, m.attempts)
        refused = [a for a in m.attempts if a.precision == "int8"]
        assert refused and refused[0].outcome == "failed" and "accuracy gate refused int8" in refused[0].reason
        reports = {a.precision: a for a in m.accuracy}
        print(f"\nimagenet gate: int8 {reports['int8'].metrics} / fp16 {reports['fp16'].metrics}")
        assert not reports["int8"].passed and reports["int8"].gate_metric == "top1_agreement"
        assert reports["int8"].metrics["top1_agreement"] < reports["int8"].threshold
        assert reports["fp16"].passed and reports["fp16"].metrics["top1_agreement"] >= 0.95
        assert reports["fp16"].samples >= 20
        assert c.infer("imagenet", media / "coffee.png").classes[0].index == 967


def test_centerface_int8_passes_and_serves(served, media):
    with Client(served.address, timeout=60) as c:
        m = c.get_model("faces")
        assert m.precision == "int8", m.attempts
        (report,) = [a for a in m.accuracy if a.precision == "int8"]
        print(f"\nfaces int8 gate: {report.metrics}")
        assert report.passed and report.metrics["mean_iou"] >= 0.9
        r = c.infer("faces", media / "astronaut.png")
        assert len(r.detections) == 1 and r.precision == "int8"
