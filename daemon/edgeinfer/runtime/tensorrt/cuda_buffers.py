"""Device buffers, pinned host buffers and streams through cuda-python's runtime API.

cuda-python moved its runtime module: ``cuda.bindings.runtime`` (cuda-python >= 12.6,
13.x) and ``cuda.cudart`` (older 12.x, what JetPack 6 images carry). Every call returns a
tuple whose first element is a cudaError_t; `check()` turns a non-zero one into CudaError.

Pinned (page-locked) host memory is what makes cudaMemcpyAsync truly asynchronous; numpy
views onto it are made with ctypes, so no copy happens between the numpy array and the
buffer that the DMA engine reads.

This module was exercised on the lent H200 (scripts/gpu_check_trt.py runs a pinned ->
device -> pinned round trip); the TensorRT calls that use these buffers have not run.
"""
from __future__ import annotations

import ctypes
from typing import Optional

import numpy as np


class CudaError(RuntimeError):
    """A CUDA runtime call failed; the message names the call and the CUDA error."""


def cudart():
    """cuda-python's runtime module, or raise ImportError with both names tried."""
    try:
        from cuda.bindings import runtime as rt  # cuda-python >= 12.6
        return rt
    except ImportError:
        pass
    try:
        from cuda import cudart as rt  # cuda-python < 12.6
        return rt
    except ImportError as exc:
        raise ImportError("cuda-python is not installed (neither cuda.bindings.runtime nor cuda.cudart "
                          "imports); install the 'gpu' extra: pip install cuda-python") from exc


def check(result, what: str):
    """Unpack a cuda-python result tuple; raise CudaError on a non-zero cudaError_t."""
    if isinstance(result, tuple):
        err, rest = result[0], result[1:]
    else:
        err, rest = result, ()
    if int(err) != 0:
        rt = cudart()
        try:
            name = rt.cudaGetErrorName(err)[1]
            name = name.decode() if isinstance(name, bytes) else str(name)
            text = rt.cudaGetErrorString(err)[1]
            text = text.decode() if isinstance(text, bytes) else str(text)
        except Exception:  # noqa: BLE001 - the message matters more than its decoration
            name, text = str(int(err)), ""
        raise CudaError(f"{what} failed: {name} ({text})")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else rest


def set_device(index: int) -> None:
    """Make `index` current for this thread (worker threads start on device 0)."""
    check(cudart().cudaSetDevice(index), f"cudaSetDevice({index})")


class Stream:
    """A non-blocking CUDA stream (does not synchronize with the legacy default stream)."""

    def __init__(self) -> None:
        rt = cudart()
        self._rt = rt
        self.stream = check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")

    @property
    def handle(self) -> int:
        """Integer cudaStream_t, the form TensorRT's Python API takes."""
        return int(self.stream)

    def synchronize(self) -> None:
        check(self._rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.stream is not None:
            check(self._rt.cudaStreamDestroy(self.stream), "cudaStreamDestroy")
            self.stream = None


class DeviceBuffer:
    """`nbytes` of device memory (cudaMalloc)."""

    def __init__(self, nbytes: int) -> None:
        self._rt = cudart()
        self.nbytes = max(int(nbytes), 1)  # cudaMalloc(0) returns a null pointer
        self.ptr: Optional[int] = int(check(self._rt.cudaMalloc(self.nbytes), f"cudaMalloc({self.nbytes})"))

    def free(self) -> None:
        if self.ptr:
            check(self._rt.cudaFree(self.ptr), "cudaFree")
            self.ptr = None


class PinnedBuffer:
    """`nbytes` of page-locked host memory (cudaMallocHost) with numpy views onto it."""

    def __init__(self, nbytes: int) -> None:
        self._rt = cudart()
        self.nbytes = max(int(nbytes), 1)
        self.ptr: Optional[int] = int(check(self._rt.cudaMallocHost(self.nbytes), f"cudaMallocHost({self.nbytes})"))
        self._raw = (ctypes.c_uint8 * self.nbytes).from_address(self.ptr)

    def view(self, dtype, shape) -> np.ndarray:
        """A numpy array of `dtype`/`shape` over the start of the buffer (no copy)."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
        if count * dtype.itemsize > self.nbytes:
            raise ValueError(f"{count * dtype.itemsize} bytes do not fit a pinned buffer of {self.nbytes}")
        return np.frombuffer(self._raw, dtype=dtype, count=count).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            self._raw = None
            check(self._rt.cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = None


def copy_htod_async(dst: DeviceBuffer, src: PinnedBuffer, nbytes: int, stream: Stream) -> None:
    rt = cudart()
    check(rt.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream.stream),
          "cudaMemcpyAsync(host->device)")


def copy_dtoh_async(dst: PinnedBuffer, src: DeviceBuffer, nbytes: int, stream: Stream) -> None:
    rt = cudart()
    check(rt.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.stream),
          "cudaMemcpyAsync(device->host)")


def round_trip_check(nbytes: int = 1 << 20) -> float:
    """Pinned -> device -> pinned copy of `nbytes` on a fresh stream; returns seconds taken.

    Used by scripts/gpu_check_trt.py to show the buffer code works on a real GPU.
    """
    import time

    stream = Stream()
    src, dst, dev = PinnedBuffer(nbytes), PinnedBuffer(nbytes), DeviceBuffer(nbytes)
    try:
        a = src.view(np.uint8, (nbytes,))
        a[:] = np.arange(nbytes, dtype=np.uint64).astype(np.uint8)
        start = time.perf_counter()
        copy_htod_async(dev, src, nbytes, stream)
        copy_dtoh_async(dst, dev, nbytes, stream)
        stream.synchronize()
        took = time.perf_counter() - start
        if not np.array_equal(dst.view(np.uint8, (nbytes,)), a):
            raise CudaError("round trip returned different bytes")
        return took
    finally:
        for b in (src, dst, dev):
            b.free()
        stream.close()
