"""ONNX Runtime CUDA EP with IO binding on edgeinfer's buffers gives the CPU's answers."""
from __future__ import annotations

import numpy as np
import pytest

from edgeinfer.runtime.onnxruntime.runner import OnnxRuntimeRunner
from edgeinfer_bench.trivial import build_trivial_onnx

pytestmark = pytest.mark.gpu


def _session(path, provider):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=[provider, "CPUExecutionProvider"])


def test_iobinding_runner_equals_cpu_on_the_trivial_model(ort_cuda, tmp_path):
    path = build_trivial_onnx(tmp_path / "t.onnx")
    gpu = OnnxRuntimeRunner(_session(path, "CUDAExecutionProvider"), io_binding=True)
    assert gpu.info.details["io_binding"] == "on" and gpu.info.device.startswith("cuda")
    rng = np.random.default_rng()
    try:
        for batch in (1, 5, 2):  # growing then shrinking batches reuse the buffers
            x = rng.standard_normal((batch, 64)).astype(np.float32)
            y = gpu.infer({"x": x})["y"]
            assert y.shape == (batch, 64) and np.allclose(y, x + 1, atol=1e-6)
    finally:
        gpu.deactivate()


def test_iobinding_runner_equals_plain_cuda_and_cpu_on_efficientnet(ort_cuda, classifier_onnx):
    rng = np.random.default_rng()
    x = rng.standard_normal((4, 3, 224, 224)).astype(np.float32)
    bound = OnnxRuntimeRunner(_session(classifier_onnx, "CUDAExecutionProvider"), io_binding=True)
    plain = OnnxRuntimeRunner(_session(classifier_onnx, "CUDAExecutionProvider"), io_binding=False)
    cpu = OnnxRuntimeRunner(_session(classifier_onnx, "CPUExecutionProvider"))
    try:
        a, b, c = (r.infer({"input": x})["logits"] for r in (bound, plain, cpu))
    finally:
        for r in (bound, plain, cpu):
            r.deactivate()
    assert np.array_equal(a.argmax(1), c.argmax(1))
    assert np.max(np.abs(a - b)) <= 1e-3  # same kernels, only the data path differs
    assert np.max(np.abs(a - c)) <= 5e-2  # cuDNN vs MLAS: float32 reassociation
