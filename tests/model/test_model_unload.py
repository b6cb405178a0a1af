"""Stopping the daemon while a model still loads ends the load quietly, never as a model error."""
from __future__ import annotations

import logging
import threading
import time

from edgeinfer.config import parse_config
from edgeinfer.model.served import ServedModel
from edgeinfer.model.types import ModelState


def _faces(centerface_onnx, tmp_path, warmup_runs):
    cfg = parse_config({"cache": {"dir": str(tmp_path)}, "models": [
        {"name": "faces", "onnx": str(centerface_onnx), "backends": ["onnxruntime"], "warmup_runs": warmup_runs,
         "input": {"resize": "letterbox", "size": [640, 480]}, "postprocess": {"task": "centerface"}}]},
        source="test_model_unload")
    return ServedModel(cfg.models[0], cfg.server, tmp_path)


def test_unload_during_warm_up_stops_the_load_without_an_error(centerface_onnx, tmp_path, caplog):
    model = _faces(centerface_onnx, tmp_path, warmup_runs=10_000)  # warm-up outlasts the test
    loader = threading.Thread(target=model.load)
    with caplog.at_level(logging.INFO, logger="edgeinfer"):
        loader.start()
        end = time.monotonic() + 60
        while "warming up" not in model.state_reason and time.monotonic() < end:
            time.sleep(0.01)
        assert "warming up" in model.state_reason, model.state_reason
        model.unload()  # what ModelRegistry.close() does at shutdown
        loader.join(60)
    assert not loader.is_alive()
    assert model.state is ModelState.FAILED
    assert model.state_reason == "loading stopped: the daemon is shutting down"
    assert model.runner is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], \
        [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_real_load_failure_is_still_an_error(tmp_path, caplog):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    cfg = parse_config({"cache": {"dir": str(tmp_path)}, "models": [
        {"name": "faces", "onnx": str(broken), "backends": ["onnxruntime"],
         "input": {"size": [640, 480]}, "postprocess": {"task": "centerface"}}]},
        source="test_model_unload", check_files=False)
    model = ServedModel(cfg.models[0], cfg.server, tmp_path)
    with caplog.at_level(logging.INFO, logger="edgeinfer"):
        model.load()
    assert model.state is ModelState.FAILED
    assert model.state_reason != "loading stopped: the daemon is shutting down"
    assert [r for r in caplog.records if r.levelno >= logging.ERROR]
