"""GPU tests skip, with the reason, where cuda-python, a CUDA device or onnxruntime's CUDA EP is missing."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def cuda_device() -> int:
    from edgeinfer.runtime.gpu.memory import GpuUnavailable, require_device

    try:
        require_device(0)
    except GpuUnavailable as exc:
        pytest.skip(f"no GPU here: {exc}")
    return 0


@pytest.fixture(scope="session")
def ort_cuda(cuda_device) -> int:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu)")
    return cuda_device


@pytest.fixture
def stream(cuda_device):
    from edgeinfer.runtime.gpu.memory import Stream

    with Stream(cuda_device) as s:
        yield s
