"""`edgeinfer bench --variants`: one model in several variants, one report (edgeinfer_bench/variants.py)."""
from __future__ import annotations

import copy
import json
import sys

import pytest

from edgeinfer_bench import variants
from edgeinfer_bench.cli import main as bench_main


@pytest.fixture
def imagenet_config(dev_config, media, tmp_path):
    """The dev config's classifier alone, with the photos as calibration/validation set and a private cache."""
    cfg = copy.deepcopy(dev_config)
    cfg.cache.dir = str(tmp_path / "cache")
    cfg.models = [m for m in cfg.models if m.name == "imagenet"]
    cfg.models[0].calibration.images = str(media)
    cfg.models[0].calibration.max_images = 4
    cfg.models[0].backends = ["onnxruntime"]
    return cfg


def test_a_precision_variant_serves_that_precision_alone_with_the_gate_forced_open(imagenet_config):
    cfg, thresholds = variants.variant_config(imagenet_config, "imagenet", "precision", "int8")
    m = cfg.models[0]
    assert m.precision == ["int8"]
    assert (m.calibration.min_top1_agreement, m.calibration.min_mean_iou, m.calibration.min_cosine) == (0, 0, 0)
    # the thresholds the config asked for come back for the verdict, and the caller's config is untouched
    assert thresholds == {"min_top1_agreement": 0.9, "min_mean_iou": 0.9, "min_cosine": 0.99}
    assert imagenet_config.models[0].precision == ["fp32"]
    assert imagenet_config.models[0].calibration.min_top1_agreement == 0.9


def test_decode_and_backend_variants_and_unknown_names(imagenet_config):
    cfg, _ = variants.variant_config(imagenet_config, "imagenet", "decode", "gpu")
    assert cfg.models[0].input.decode == "gpu"
    cfg, _ = variants.variant_config(imagenet_config, "imagenet", "backend", "tensorrt")
    assert cfg.models[0].backends == ["tensorrt"]
    with pytest.raises(ValueError, match="not in the config"):
        variants.variant_config(imagenet_config, "nope", "precision", "fp16")
    with pytest.raises(ValueError, match="axis"):
        variants.variant_config(imagenet_config, "imagenet", "colour", "fp16")
    with pytest.raises(ValueError, match="precision variants are"):
        variants.parse_values("precision", "fp32,bf16")
    with pytest.raises(ValueError, match="each once"):
        variants.parse_values("decode", "cpu,cpu")
    assert variants.parse_values("precision", "") == ["fp32", "fp16", "int8"]


def test_gate_verdict_at_the_configured_threshold():
    thresholds = {"min_top1_agreement": 0.9, "min_mean_iou": 0.9, "min_cosine": 0.99}
    refused = variants.gate_verdict("classification", {"metrics": {"top1_agreement": 0.6}}, thresholds, "int8")
    assert refused["passed"] is False and "REFUSED" in refused["text"] and "0.600 < 0.9" in refused["text"]
    passed = variants.gate_verdict("centerface", {"metrics": {"mean_iou": 0.95}}, thresholds, "fp16")
    assert passed["passed"] is True and passed["metric"] == "mean_iou"
    assert variants.gate_verdict("raw", None, thresholds, "fp16")["passed"] is None
    assert variants.gate_verdict("classification", None, thresholds, "fp32")["text"] == "reference"


def test_load_seconds_come_from_the_ready_state():
    assert variants.load_seconds("ready on onnxruntime/fp16 (cpu) in 3.2s; normalize on gpu") == 3.2
    assert variants.load_seconds("failed: no backend") is None


def test_bad_usage_exits_2(capsys):
    assert bench_main(["--variants", "precision", "--config", "configs/dev.toml"]) == 2
    assert "one model" in capsys.readouterr().err
    assert bench_main(["--variants", "precision", "--config", "configs/dev.toml", "--models", "imagenet",
                       "--variant-values", "fp64"]) == 2
    assert "fp64" in capsys.readouterr().err


@pytest.mark.slow
def test_fp32_and_fp16_measured_with_accuracy_and_a_report(imagenet_config, media, tmp_path):
    """Two real daemons (fp32, fp16) on the real classifier, short points: every figure of the report present."""
    settings = variants.VariantSettings(config=imagenet_config, model="imagenet", axis="precision",
                                        values=["fp32", "fp16"], images=media, saturating=2,
                                        duration_s=0.6, warmup_s=0.2, command="test")
    lines: list[str] = []
    results = variants.run_variants(settings, progress=lines.append)
    fp32, fp16 = results["variants"]
    for v in (fp32, fp16):
        assert v["state"] == "ready", v
        assert v["latency"]["errors"] == 0 and v["throughput"]["errors"] == 0
        assert v["latency"]["count"] > 0 and v["throughput"]["concurrency"] == 2
        assert v["latency"]["p50_ms"] <= v["latency"]["p95_ms"] <= v["latency"]["p99_ms"]
        assert v["load_s"] is not None and v["host_rss_mb_end"] > 50
        assert v["latency"]["latencies_ms"] == sorted(v["latency"]["latencies_ms"])
        assert v["throughput"]["cpu"][0]["server_cores"] > 0  # the daemon's CPU in the measured window
    assert (fp32["precision"], fp16["precision"]) == ("fp32", "fp16")
    # the gate ran for fp16 on the validation photos and agreed with fp32
    assert fp16["accuracy"]["samples"] > 0
    assert fp16["accuracy"]["metrics"]["top1_agreement"] >= 0.9 and fp16["gate"]["passed"] is True
    assert fp32["gate"]["text"] == "reference" and fp32["speedup"] == 1.0
    assert results["environment"]["machine"]["usable_cpus"] >= 1
    paths = variants.write_report(results, tmp_path / "out", "v")
    assert set(paths) == {"latency", "throughput", "accuracy", "json", "markdown"}
    for key in ("latency", "throughput", "accuracy"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["markdown"].read_text()
    assert "| fp16 | onnxruntime/fp16 cpu |" in md and "passes the gate: top1_agreement" in md
    assert json.loads(paths["json"].read_text())["variants"][1]["variant"] == "fp16"
    assert any("c=2" in line for line in lines)


def test_report_of_a_refused_and_a_failed_variant(tmp_path):
    """Markdown and plots from hand-made results: the refused variant shows its figures and verdict."""
    lat = {"throughput": 50.0, "p50_ms": 10.0, "p95_ms": 12.0, "p99_ms": 15.0, "errors": 0,
           "latencies_ms": [9.0, 10.0, 11.0, 15.0]}
    thr = {"throughput": 90.0, "errors": 0}
    results = {
        "title": "t", "model": "imagenet", "task": "classification", "onnx": "/x/m.onnx", "axis": "precision",
        "command": "c", "created": "now",
        "environment": {"machine": {"cpu_model": "cpu", "usable_cpus": 2, "os": "Linux", "gpus": []},
                        "python": sys.version.split()[0], "versions": {"edgeinfer": "0"},
                        "git": {"head": "0" * 40, "state": "clean"}},
        "settings": {"saturating_concurrency": 8, "duration_s": 1, "warmup_s": 1, "payload": "p",
                     "validation": "v"},
        "variants": [
            {"variant": "fp32", "state": "ready", "backend": "onnxruntime", "precision": "fp32", "device": "cpu",
             "latency": lat, "throughput": thr, "speedup": 1.0, "accuracy": None,
             "gate": variants.gate_verdict("classification", None, {"min_top1_agreement": 0.9}, "fp32")},
            {"variant": "int8", "state": "ready", "backend": "onnxruntime", "precision": "int8", "device": "cpu",
             "latency": lat, "throughput": thr, "speedup": 1.0,
             "accuracy": {"metrics": {"top1_agreement": 0.6, "top5_overlap": 0.9}, "samples": 26},
             "gate": variants.gate_verdict("classification", {"metrics": {"top1_agreement": 0.6}},
                                           {"min_top1_agreement": 0.9}, "int8")},
            {"variant": "fp16", "state": "failed", "reason": "no calibration images",
             "gate": {"text": "no gate figures"}},
        ],
    }
    paths = variants.write_report(results, tmp_path, "r")
    md = paths["markdown"].read_text()
    assert "| int8 | REFUSED by the gate: top1_agreement 0.600 < 0.9 | 26 | 0.6000 | 0.9000 |" in md
    assert "failed: no calibration images" in md
    assert paths["accuracy"].exists() and paths["latency"].exists()
