"""The GPU data path through cuda-python: device/pinned buffers and streams (memory.py),
and image normalization as an NVRTC-compiled kernel (preprocess_kernel.py).

Importing this package needs nothing; the modules import cuda-python when
first used and raise `GpuUnavailable` (with the reason) where it or a GPU is
missing, so CPU-only installs never pay for it.
"""
from edgeinfer.runtime.gpu.memory import CudaError, GpuUnavailable

__all__ = ["CudaError", "GpuUnavailable"]
