"""A real daemon serving on ONNX Runtime's CUDA EP: tensor requests on the inline short path (the
runner's own call, no CPU bound call; its kept response refilled request after request), images on
the workers, through the registered gRPC methods."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from edgeinfer_client import Client

pytestmark = pytest.mark.gpu


def _config(trivial_onnx, classifier_onnx, tmp_path):
    from edgeinfer.config import parse_config

    cuda = {"providers": ["CUDAExecutionProvider"]}
    return parse_config({
        # A threshold no model misses: the path must follow the input kind, not a GPU call's timing.
        "server": {"workers": 2, "inline_max_us": 10_000_000},
        "cache": {"dir": str(tmp_path)},
        "models": [
            {"name": "trivial", "onnx": str(trivial_onnx), "backends": ["onnxruntime"],
             "postprocess": {"task": "raw"}, "onnxruntime": cuda},
            {"name": "imagenet", "onnx": str(classifier_onnx), "backends": ["onnxruntime"],
             "input": {"resize": "center-crop", "mean": [127.0] * 3, "std": [128.0] * 3},
             "postprocess": {"task": "classification", "labels": str(classifier_onnx.parent / "imagenet-labels.txt")},
             "onnxruntime": cuda},
        ]}, source="test_served_on_cuda")


def _spy_runner(model) -> list[str]:
    """The thread of each call of the model's runner (its infer_impl; the spy still calls through)."""
    seen = []
    runner = model.runner
    inner = runner.infer_impl

    def spy(feeds):
        seen.append(threading.current_thread().name)
        return inner(feeds)
    runner.infer_impl = spy
    return seen


def test_cuda_models_serve_tensors_inline_and_images_on_workers(ort_cuda, start_daemon, trivial_onnx,
                                                                classifier_onnx, media, tmp_path):
    d = start_daemon(_config(trivial_onnx, classifier_onnx, tmp_path))
    trivial, imagenet = d.daemon.registry.get("trivial"), d.daemon.registry.get("imagenet")
    for model in (trivial, imagenet):
        assert model.runner.info.device.startswith("cuda"), model.runner.info
        assert model.runner.bound_call() is None  # the CPU EP's bound call only: the inline path's other branch
    on_trivial, on_imagenet = _spy_runner(trivial), _spy_runner(imagenet)
    rng = np.random.default_rng(7)
    with Client(d.address, timeout=60) as c:
        xs = [rng.standard_normal((1, 64)).astype(np.float32) for _ in range(4)]
        answers = [c.infer("trivial", tensors={"x": x}, request_id=f"r{k}") for k, x in enumerate(xs)]
        top = c.infer("imagenet", (media / "coffee.png").read_bytes(), top_k=1)
        with pytest.raises(Exception) as err:  # a bad tensor: a clean status, the loop lives
            c.infer("trivial", tensors={"x": np.zeros((1, 3), np.float32)})
        after = c.infer("trivial", tensors={"x": xs[0]})
    for k, (x, r) in enumerate(zip(xs, answers)):  # each answer its own, though the message is refilled
        assert r.request_id == f"r{k}" and r.backend == "onnxruntime"
        np.testing.assert_allclose(r.outputs["y"], x + 1, atol=1e-6)
    np.testing.assert_allclose(after.outputs["y"], xs[0] + 1, atol=1e-6)
    assert top.classes[0].label == "espresso"
    assert "INVALID_ARGUMENT" in str(err.value)
    assert on_trivial[:4] == [d.thread.name] * 4  # the event loop: the short path
    assert on_imagenet and all(name.startswith("infer") for name in on_imagenet)  # a worker
    assert d.daemon.pipeline._lanes["trivial"].inline
