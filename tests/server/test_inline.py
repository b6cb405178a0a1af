"""Tiny models run inline on the event loop; everything else still hops to the workers."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from edgeinfer_client import Client


def _config(trivial_onnx, classifier_onnx, tmp_path, inline_max_us):
    from edgeinfer.config import parse_config

    labels = classifier_onnx.parent / "imagenet-labels.txt"
    return parse_config({
        "server": {"workers": 2, "inline_max_us": inline_max_us},
        "cache": {"dir": str(tmp_path)},
        "models": [
            {"name": "trivial", "onnx": str(trivial_onnx), "backends": ["onnxruntime"],
             "postprocess": {"task": "raw"}, "onnxruntime": {"intra_op_threads": 1}},
            {"name": "imagenet", "onnx": str(classifier_onnx), "backends": ["onnxruntime"],
             "input": {"resize": "center-crop", "mean": [127.0] * 3, "std": [128.0] * 3},
             "postprocess": {"task": "classification", "labels": str(labels)}},
        ]}, source="test_inline")


def _spy_threads(model):
    """Record the thread each predict() of `model` runs on."""
    seen = []
    inner = model.predict

    def spy(item, options):
        seen.append(threading.current_thread().name)
        return inner(item, options)
    model.predict = spy
    return seen


@pytest.fixture(scope="module")
def trivial_onnx(tmp_path_factory):
    from edgeinfer.bench.trivial import build_trivial_onnx

    return build_trivial_onnx(tmp_path_factory.mktemp("trivial") / "trivial.onnx")


def test_tiny_model_tensors_run_on_the_loop_images_on_workers(start_daemon, trivial_onnx, classifier_onnx,
                                                              media, tmp_path):
    # A threshold no model misses: which path runs must follow the input kind, not timing luck.
    d = start_daemon(_config(trivial_onnx, classifier_onnx, tmp_path, inline_max_us=10_000_000))
    trivial, imagenet = d.daemon.registry.get("trivial"), d.daemon.registry.get("imagenet")
    assert trivial.warm_infer_us is not None and trivial.warm_infer_us > 0
    on_trivial, on_imagenet = _spy_threads(trivial), _spy_threads(imagenet)
    x = np.arange(64, dtype=np.float32)[None]
    with Client(d.address, timeout=30) as c:
        for _ in range(3):
            r = c.infer("trivial", tensors={"x": x})
            np.testing.assert_array_equal(r.outputs["y"], x + 1)
        big = c.infer("trivial", tensors={"x": np.zeros((5, 64), np.float32)})  # batch 5: not what warm-up timed
        np.testing.assert_array_equal(big.outputs["y"], np.ones((5, 64), np.float32))
        top = c.infer("imagenet", (media / "coffee.png").read_bytes(), top_k=1)
        assert top.classes[0].label == "espresso"
        with pytest.raises(Exception) as err:  # a bad tensor on the inline path: a clean error, the loop lives
            c.infer("trivial", tensors={"x": np.zeros((1, 3), np.float32)})
        assert "INVALID_ARGUMENT" in str(err.value)
        np.testing.assert_array_equal(c.infer("trivial", tensors={"x": x}).outputs["y"], x + 1)
    assert on_trivial[:3] == [d.thread.name] * 3  # the daemon's event loop thread
    assert on_trivial[3].startswith("infer")      # the batch of 5 went to a worker
    assert on_imagenet == [on_imagenet[0]] and on_imagenet[0].startswith("infer")
    assert d.daemon.pipeline._lanes["trivial"].inline


def test_inline_off_when_the_threshold_is_zero(start_daemon, trivial_onnx, classifier_onnx, tmp_path):
    d = start_daemon(_config(trivial_onnx, classifier_onnx, tmp_path, inline_max_us=0))
    seen = _spy_threads(d.daemon.registry.get("trivial"))
    x = np.ones((1, 64), np.float32)
    with Client(d.address, timeout=30) as c:
        np.testing.assert_array_equal(c.infer("trivial", tensors={"x": x}).outputs["y"], x + 1)
    assert len(seen) == 1 and seen[0].startswith("infer")
    assert not d.daemon.pipeline._lanes["trivial"].inline
