"""Device buffers, pinned host buffers, streams and async copies, through cuda-python.

Every cuda-python call returns a tuple whose first item is the error code;
`check()` turns a non-zero code into `CudaError` naming the call and CUDA's
own message, and unwraps the value. Nothing is allocated at import: the
bindings are imported on first use (`cuda.bindings.*` for cuda-python >= 12.6,
the older `cuda.cudart` / `cuda.cuda` / `cuda.nvrtc` names otherwise).

Buffers are freed by `close()` (or a `with` block); a buffer dropped without
it is freed by its finalizer, except at interpreter exit, when the CUDA
context may already be gone.
"""
from __future__ import annotations

import ctypes
import functools
import sys
import threading
from typing import Any, Optional, Sequence

import numpy as np


class GpuUnavailable(RuntimeError):
    """cuda-python or a CUDA device is missing; the message says which."""


class CudaError(RuntimeError):
    """A CUDA runtime/driver/NVRTC call failed."""

    def __init__(self, what: str, code: int, message: str):
        super().__init__(f"{what} failed: {message} (error {code})")
        self.what = what
        self.code = code


# -- bindings ------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _bindings(name: str):
    """Import cuda-python's `runtime`, `driver` or `nvrtc` module under its new or old name."""
    old = {"runtime": "cudart", "driver": "cuda", "nvrtc": "nvrtc"}[name]
    try:
        module = __import__(f"cuda.bindings.{name}", fromlist=[name])
    except ImportError:
        try:
            module = __import__(f"cuda.{old}", fromlist=[old])
        except ImportError as exc:
            raise GpuUnavailable(f"cuda-python is not installed (pip install cuda-python): {exc}") from exc
    return module


def cudart():
    return _bindings("runtime")


def driver():
    return _bindings("driver")


def nvrtc():
    return _bindings("nvrtc")


def _message(err) -> str:
    """CUDA's text for an error code of any of the three APIs."""
    try:
        kind = type(err).__name__
        if kind == "cudaError_t":
            return cudart().cudaGetErrorString(err)[1].decode()
        if kind == "CUresult":
            res, text = driver().cuGetErrorString(err)
            return text.decode() if int(res) == 0 and text else str(err)
        if kind == "nvrtcResult":
            return nvrtc().nvrtcGetErrorString(err)[1].decode()
    except Exception:  # noqa: BLE001 - a message lookup must never hide the real error
        pass
    return str(err)


def check(result: Any, what: str) -> Any:
    """Unwrap a cuda-python result tuple `(err, *values)`.

    Returns:
        None for `(err,)`, the value for `(err, value)`, the tuple of values otherwise.
    Raises:
        CudaError: err is not success.
    """
    if not isinstance(result, tuple):
        result = (result,)
    err = result[0]
    if int(err) != 0:
        raise CudaError(what, int(err), _message(err))
    if len(result) == 1:
        return None
    if len(result) == 2:
        return result[1]
    return result[1:]


def _ptr(handle) -> int:
    """Integer address of a cuda-python handle or pointer (an int stays an int)."""
    if isinstance(handle, int):
        return handle
    try:
        return int(handle)
    except TypeError:
        return int(handle.getPtr())


# -- devices ----------------------------------------------------------------------------

def device_count() -> int:
    """Visible CUDA devices; 0 where cuda-python or the driver is missing."""
    try:
        rt = cudart()
        err, n = rt.cudaGetDeviceCount()
    except Exception:  # noqa: BLE001 - no bindings or no driver: no device
        return 0
    return int(n) if int(err) == 0 else 0


def require_device(device: int = 0) -> None:
    """Raise GpuUnavailable unless `device` exists."""
    n = device_count()
    if n == 0:
        cudart()  # raises GpuUnavailable with the import reason when the bindings are missing
        raise GpuUnavailable("no CUDA device is visible (driver missing or no GPU)")
    if not 0 <= device < n:
        raise GpuUnavailable(f"CUDA device {device} does not exist ({n} visible)")


def why_unreachable(device: str) -> Optional[str]:
    """None when the CUDA device a runner reports ("cuda:N") can be reached from here; else why not."""
    try:
        require_device(int(device.split(":")[1]) if ":" in device else 0)
    except Exception as exc:  # noqa: BLE001 - no cuda-python, no driver, no such device: say so
        return f"cuda-python cannot reach the GPU: {exc}"
    return None


def use_device(device: int = 0) -> None:
    """Make `device` current on the calling thread (worker threads start without one)."""
    check(cudart().cudaSetDevice(device), f"cudaSetDevice({device})")


def primary_context(device: int = 0) -> int:
    """The address of `device`'s primary context, the one the runtime API (and so every buffer and
    kernel here) uses: what a library that takes a CUcontext needs to share memory with them. The
    context stays retained for the life of the process."""
    drv = driver()
    check(drv.cuInit(0), "cuInit")
    return _ptr(check(drv.cuDevicePrimaryCtxRetain(check(drv.cuDeviceGet(device), "cuDeviceGet")),
                      "cuDevicePrimaryCtxRetain"))


# cudaDeviceScheduleSpin / Yield / BlockingSync: the low three bits of the device flags.
HOST_WAITS = {"spin": 1, "yield": 2, "block": 4}
_SCHEDULE_MASK = 7
_host_wait_lock = threading.Lock()
_host_wait: Optional[str] = None


def set_host_wait(mode: str) -> bool:
    """How this process's threads wait for every visible CUDA device: "spin", "yield", "block" or "auto".

    The scheduling bits of the device flags (cudaSetDeviceFlags; other bits are
    kept) belong to the device's primary context, which ONNX Runtime, TensorRT
    and our own buffers share, so one call covers every synchronize in the
    process. "auto" leaves CUDA's heuristic and touches nothing (no import, no
    context). Returns whether flags were set: False for "auto" or without a device.

    Raises:
        ValueError: unknown mode.
        CudaError: the driver refused the flags.
    """
    global _host_wait
    if mode != "auto" and mode not in HOST_WAITS:
        raise ValueError(f"host wait must be auto or one of {sorted(HOST_WAITS)}, got {mode!r}")
    with _host_wait_lock:
        if mode == "auto" or mode == _host_wait:
            return mode != "auto"
        n = device_count()
        if n == 0:
            return False
        rt = cudart()
        current = check(rt.cudaGetDevice(), "cudaGetDevice")
        try:
            for device in range(n):
                use_device(device)
                flags = int(check(rt.cudaGetDeviceFlags(), "cudaGetDeviceFlags"))
                check(rt.cudaSetDeviceFlags((flags & ~_SCHEDULE_MASK) | HOST_WAITS[mode]),
                      f"cudaSetDeviceFlags({mode})")
        finally:
            use_device(int(current))
        _host_wait = mode
        return True


def host_wait_flags(device: int = 0) -> int:
    """The scheduling bits now in force on `device` (1 spin, 2 yield, 4 block, 0 auto)."""
    rt = cudart()
    use_device(device)
    return int(check(rt.cudaGetDeviceFlags(), "cudaGetDeviceFlags")) & _SCHEDULE_MASK


def compute_capability(device: int = 0) -> tuple[int, int]:
    rt = cudart()
    major = check(rt.cudaDeviceGetAttribute(rt.cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor, device),
                  "cudaDeviceGetAttribute(major)")
    minor = check(rt.cudaDeviceGetAttribute(rt.cudaDeviceAttr.cudaDevAttrComputeCapabilityMinor, device),
                  "cudaDeviceGetAttribute(minor)")
    return int(major), int(minor)


# -- streams ------------------------------------------------------------------------------

class Stream:
    """A non-blocking CUDA stream (does not synchronize with the legacy default stream)."""

    def __init__(self, device: int = 0):
        rt = cudart()
        self.device = device
        use_device(device)
        # 1 = cudaStreamNonBlocking (not every cuda-python version exports the constant).
        self.handle = check(rt.cudaStreamCreateWithFlags(1), "cudaStreamCreateWithFlags")
        self.ptr = _ptr(self.handle)

    def synchronize(self) -> None:
        check(cudart().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def close(self) -> None:
        handle, self.handle = self.handle, None
        if handle is not None:
            check(cudart().cudaStreamDestroy(handle), "cudaStreamDestroy")

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "handle", None) is not None and not sys.is_finalizing():
            try:
                self.close()
            except Exception:  # noqa: BLE001 - best effort in a finalizer
                pass


# -- buffers ---------------------------------------------------------------------------------

class _Buffer:
    """Common part of device and pinned buffers: size, address, grow-on-demand, close."""

    _alloc_name = ""
    _free_name = ""

    def __init__(self, nbytes: int, device: int = 0):
        self.device = device
        self.nbytes = 0
        self.ptr = 0
        self._lock = threading.Lock()
        self._allocate(max(1, int(nbytes)))

    def _allocate(self, nbytes: int) -> None:
        use_device(self.device)
        raw = check(getattr(cudart(), self._alloc_name)(nbytes), f"{self._alloc_name}({nbytes})")
        self.ptr = _ptr(raw)
        self.nbytes = nbytes

    def _free(self) -> None:
        if self.ptr:
            ptr, self.ptr, self.nbytes = self.ptr, 0, 0
            check(getattr(cudart(), self._free_name)(ptr), self._free_name)

    def ensure(self, nbytes: int) -> None:
        """Grow to at least `nbytes` (old contents are lost); never shrinks."""
        with self._lock:
            if nbytes > self.nbytes:
                # Grow by 1.5x so a slowly rising batch size does not reallocate every time
                # (sized before _free(), which zeroes nbytes).
                size = max(int(nbytes), int(self.nbytes * 1.5))
                self._free()
                self._allocate(size)

    def close(self) -> None:
        self._free()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "ptr", 0) and not sys.is_finalizing():
            try:
                self._free()
            except Exception:  # noqa: BLE001 - best effort in a finalizer
                pass


class DeviceBuffer(_Buffer):
    """`nbytes` of device memory (cudaMalloc)."""

    _alloc_name = "cudaMalloc"
    _free_name = "cudaFree"

    def copy_from_host(self, src, nbytes: int, stream: Stream) -> None:
        """Async host -> device copy of `nbytes` from `src` (an address, a PinnedBuffer or a numpy array).

        Truly asynchronous only from pinned memory; from a numpy array CUDA stages
        it and returns when the source may be reused.
        """
        self._check_size(nbytes)
        rt = cudart()
        check(rt.cudaMemcpyAsync(self.ptr, _host_ptr(src), nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                                 stream.handle), "cudaMemcpyAsync(host->device)")

    def copy_to_host(self, dst, nbytes: int, stream: Stream) -> None:
        """Async device -> host copy of `nbytes` into `dst`; synchronize `stream` before reading it."""
        self._check_size(nbytes)
        rt = cudart()
        check(rt.cudaMemcpyAsync(_host_ptr(dst), self.ptr, nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                                 stream.handle), "cudaMemcpyAsync(device->host)")

    def copy_2d_from_device(self, offset: int, dst_pitch: int, src_ptr: int, src_pitch: int, width: int,
                            height: int, stream: Stream) -> None:
        """Async device -> device copy of `height` rows of `width` bytes, rows `src_pitch` apart at
        `src_ptr`, to rows `dst_pitch` apart from `offset` bytes into this buffer."""
        self._check_size(offset + dst_pitch * (height - 1) + width)
        rt = cudart()
        check(rt.cudaMemcpy2DAsync(self.ptr + offset, dst_pitch, src_ptr, src_pitch, width, height,
                                   rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream.handle),
              "cudaMemcpy2DAsync(device->device)")

    def _check_size(self, nbytes: int) -> None:
        if nbytes > self.nbytes:
            raise ValueError(f"copy of {nbytes} bytes does not fit a device buffer of {self.nbytes}")


class PinnedBuffer(_Buffer):
    """`nbytes` of page-locked host memory (cudaMallocHost): the source/target of async copies."""

    _alloc_name = "cudaMallocHost"
    _free_name = "cudaFreeHost"

    def view(self, dtype, shape: Sequence[int]) -> np.ndarray:
        """A numpy array over the first bytes of this buffer (no copy; valid until close/ensure)."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
        nbytes = count * dtype.itemsize
        if nbytes > self.nbytes:
            raise ValueError(f"{list(shape)} {dtype} needs {nbytes} bytes; the pinned buffer has {self.nbytes}")
        raw = (ctypes.c_byte * max(nbytes, 1)).from_address(self.ptr)
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)


def _host_ptr(src) -> int:
    if isinstance(src, PinnedBuffer):
        return src.ptr
    if isinstance(src, np.ndarray):
        if not src.flags.c_contiguous:
            raise ValueError("host arrays must be C-contiguous for a device copy")
        return src.ctypes.data
    return int(src)


class DeviceArray:
    """A typed view of a DeviceBuffer: dtype, shape and a pointer, as inference runtimes want it."""

    def __init__(self, buffer: DeviceBuffer, dtype, shape: Sequence[int], offset: int = 0):
        self.buffer = buffer
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(d) for d in shape)
        self.offset = offset
        if self.offset + self.nbytes > buffer.nbytes:
            raise ValueError(f"{list(self.shape)} {self.dtype} at offset {offset} does not fit {buffer.nbytes} bytes")

    @property
    def ptr(self) -> int:
        return self.buffer.ptr + self.offset

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def to_host(self, stream: Stream, pinned: Optional[PinnedBuffer] = None) -> np.ndarray:
        """Copy to a new numpy array (through `pinned` when given) and wait for it."""
        rt = cudart()
        if pinned is None:
            out = np.empty(self.shape, self.dtype)
            check(rt.cudaMemcpyAsync(out.ctypes.data, self.ptr, self.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                                     stream.handle), "cudaMemcpyAsync(device->host)")
            stream.synchronize()
            return out
        pinned.ensure(self.nbytes)
        check(rt.cudaMemcpyAsync(pinned.ptr, self.ptr, self.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                                 stream.handle), "cudaMemcpyAsync(device->host)")
        stream.synchronize()
        return pinned.view(self.dtype, self.shape).copy()

    @classmethod
    def from_host(cls, array: np.ndarray, stream: Stream, device: int = 0) -> "DeviceArray":
        """A new device buffer holding a copy of `array` (synchronous: for tests and checks)."""
        array = np.ascontiguousarray(array)
        buf = DeviceBuffer(array.nbytes, device)
        buf.copy_from_host(array, array.nbytes, stream)
        stream.synchronize()
        return cls(buf, array.dtype, array.shape)
