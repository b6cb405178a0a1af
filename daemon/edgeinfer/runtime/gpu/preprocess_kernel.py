"""Image normalization on the GPU: uint8 HWC (BGR/RGB/gray) -> float32 NCHW, ((v * scale) - mean) / std.

The same arithmetic as model/families/preprocess.py, which folds the formula into
`v * mul + add` with mul = scale / std and add = -mean / std in float32 and
applies it as two numpy operations (multiply, then add, each rounded). The
kernel does exactly that with `__fmul_rn` / `__fadd_rn`, which forbid the
compiler from contracting them into one fused multiply-add, so GPU and CPU
results are bit-identical, not merely close.

Decoding and resizing stay on the CPU (OpenCV); this kernel replaces the
float conversion, normalization and HWC->CHW transpose, and writes straight
into one slot of a batched device tensor, so a batch can be assembled on the
device without another copy.

The kernel is compiled at first use with NVRTC for the device's own compute
capability (a cubin, falling back to PTX the driver JITs when this NVRTC does
not know the architecture yet).
"""
from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from edgeinfer.runtime.gpu.memory import DeviceArray, DeviceBuffer, Stream, check, compute_capability, driver, nvrtc, require_device

KERNEL_NAME = "edgeinfer_hwc_u8_to_nchw_f32"

_SOURCE = r"""
extern "C" __global__ void edgeinfer_hwc_u8_to_nchw_f32(
    const unsigned char* __restrict__ src, float* __restrict__ dst,
    int height, int width, int channels, int src_row_bytes, int src_image_bytes,
    int swap_rb,
    float mul0, float mul1, float mul2, float add0, float add1, float add2)
{
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    const int n = blockIdx.z;                     // image within the batch
    if (x >= width || y >= height) return;
    const unsigned char* px = src + (long long)n * src_image_bytes + (long long)y * src_row_bytes
                              + (long long)x * channels;
    const long long plane = (long long)height * width;
    float* out = dst + (long long)n * channels * plane + (long long)y * width + x;
    const float mul[3] = {mul0, mul1, mul2};
    const float add[3] = {add0, add1, add2};
    for (int c = 0; c < channels; ++c) {
        // Output channel c reads source channel 2-c when swapping BGR<->RGB.
        const int sc = (swap_rb && channels == 3) ? 2 - c : c;
        // Multiply then add, each rounded, as numpy does: no fused multiply-add.
        out[c * plane] = __fadd_rn(__fmul_rn((float)px[sc], mul[c]), add[c]);
    }
}
"""


@dataclass(frozen=True)
class Normalization:
    """Per output channel: out = v * mul[c] + add[c] (mul = scale / std, add = -mean / std)."""

    mul: tuple[float, float, float]
    add: tuple[float, float, float]

    @classmethod
    def from_config(cls, scale: float, mean: Sequence[float], std: Sequence[float],
                    channels: int = 3) -> "Normalization":
        """Fold like Preprocessor does (float32 arithmetic, broadcast of 1-value lists)."""
        m = np.asarray(mean, np.float32).reshape(-1)
        s = np.asarray(std, np.float32).reshape(-1)
        mul = np.broadcast_to(np.float32(scale) / s, (channels,)).astype(np.float32)
        add = np.broadcast_to(-m / s, (channels,)).astype(np.float32)
        pad = lambda a: tuple(float(v) for v in list(a) + [0.0] * (3 - len(a)))  # noqa: E731
        return cls(pad(mul), pad(add))

    @classmethod
    def from_input_config(cls, cfg) -> "Normalization":
        """From a config.InputConfig."""
        return cls.from_config(cfg.scale, cfg.mean, cfg.std, 1 if cfg.color == "gray" else 3)


def _compile(device: int) -> tuple[bytes, str]:
    """NVRTC-compile the kernel for `device`; returns (image, 'cubin sm_XY' or 'ptx compute_XY')."""
    major, minor = compute_capability(device)
    errors = []
    for kind, arch in (("cubin", f"sm_{major}{minor}"), ("ptx", f"compute_{major}{minor}")):
        try:
            return _compile_for(kind, arch), f"{kind} {arch}"
        except RuntimeError as exc:
            # An NVRTC older than the GPU knows no sm_XY: PTX for the driver to JIT still works.
            errors.append(str(exc))
    raise RuntimeError("; ".join(errors))


def _compile_for(kind: str, arch: str) -> bytes:
    rtc = nvrtc()
    prog = check(rtc.nvrtcCreateProgram(_SOURCE.encode(), b"edgeinfer_preprocess.cu", 0, [], []),
                 "nvrtcCreateProgram")
    try:
        opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++14"]
        err = rtc.nvrtcCompileProgram(prog, len(opts), opts)[0]
        if int(err) != 0:
            raise RuntimeError(f"NVRTC could not compile the preprocessing kernel for {arch}: "
                               f"{_program_log(prog) or err}")
        get_size, get = (rtc.nvrtcGetCUBINSize, rtc.nvrtcGetCUBIN) if kind == "cubin" else \
            (rtc.nvrtcGetPTXSize, rtc.nvrtcGetPTX)
        size = check(get_size(prog), f"nvrtcGet{kind.upper()}Size")
        image = b" " * size
        check(get(prog, image), f"nvrtcGet{kind.upper()}")
        return image
    finally:
        check(rtc.nvrtcDestroyProgram(prog), "nvrtcDestroyProgram")


def _program_log(prog) -> str:
    rtc = nvrtc()
    try:
        size = check(rtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
        buf = b" " * size
        check(rtc.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog")
        return buf.decode(errors="replace").strip("\x00 \n")
    except Exception:  # noqa: BLE001 - the log is a courtesy
        return ""


class PreprocessKernel:
    """The compiled kernel on one device. Thread-safe; compile once, launch on any stream.

    Example:
        k = PreprocessKernel(device=0)
        k.launch(src_u8_hwc, dst_f32_nchw, Normalization.from_input_config(cfg.input), swap_rb=True, stream=s)
    """

    BLOCK = (32, 8, 1)

    def __init__(self, device: int = 0):
        require_device(device)
        self.device = device
        self.image, self.target = _compile(device)
        drv = driver()
        check(drv.cuInit(0), "cuInit")
        dev = check(drv.cuDeviceGet(device), "cuDeviceGet")
        # The runtime API (cudaMalloc, streams, ONNX Runtime) works in the device's
        # primary context; load the module there so pointers are shared.
        self._context = check(drv.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain")
        self._lock = threading.Lock()
        with self._lock:
            check(drv.cuCtxSetCurrent(self._context), "cuCtxSetCurrent")
            # Pass the image by address: a numpy copy keeps it alive through the call.
            image = np.frombuffer(self.image, dtype=np.uint8).copy()
            self._module = check(drv.cuModuleLoadData(image.ctypes.data), "cuModuleLoadData")
            self._function = check(drv.cuModuleGetFunction(self._module, KERNEL_NAME.encode()),
                                   "cuModuleGetFunction")

    def launch(self, src: DeviceArray, dst: DeviceArray, norm: Normalization, swap_rb: bool,
               stream: Stream, src_row_bytes: Optional[int] = None) -> None:
        """Enqueue: src uint8 [N,] H, W, C  ->  dst float32 [N, C, H, W] (asynchronous on `stream`).

        Raises:
            ValueError: shapes or dtypes do not match.
            CudaError: the launch failed.
        """
        shape = src.shape if len(src.shape) == 4 else (1,) + src.shape
        if src.dtype != np.uint8 or len(shape) != 4 or shape[3] not in (1, 3):
            raise ValueError(f"source must be uint8 [N,]HxWxC with C 1 or 3, got {src.dtype} {list(src.shape)}")
        n, h, w, c = shape
        if dst.dtype != np.float32 or dst.shape != (n, c, h, w):
            raise ValueError(f"destination must be float32 {[n, c, h, w]}, got {dst.dtype} {list(dst.shape)}")
        row = src_row_bytes or w * c
        drv = driver()
        bx, by, _ = self.BLOCK
        grid = ((w + bx - 1) // bx, (h + by - 1) // by, n)
        args = ((src.ptr, dst.ptr, h, w, c, row, row * h, int(bool(swap_rb)), *norm.mul, *norm.add),
                (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                 ctypes.c_int, ctypes.c_int, ctypes.c_float, ctypes.c_float, ctypes.c_float,
                 ctypes.c_float, ctypes.c_float, ctypes.c_float))
        check(drv.cuCtxSetCurrent(self._context), "cuCtxSetCurrent")
        check(drv.cuLaunchKernel(self._function, *grid, *self.BLOCK, 0, drv.CUstream(stream.ptr), args, 0),
              f"cuLaunchKernel({KERNEL_NAME})")

    def normalize(self, images_hwc: np.ndarray, norm: Normalization, swap_rb: bool, stream: Stream) -> np.ndarray:
        """Host in, host out (synchronous): for checks against the CPU path."""
        imgs = np.ascontiguousarray(images_hwc if images_hwc.ndim == 4 else images_hwc[None])
        n, h, w, c = imgs.shape
        src = DeviceArray.from_host(imgs, stream, self.device)
        out = DeviceBuffer(n * c * h * w * 4, self.device)
        try:
            dst = DeviceArray(out, np.float32, (n, c, h, w))
            self.launch(src, dst, norm, swap_rb, stream)
            return dst.to_host(stream)
        finally:
            out.close()
            src.buffer.close()

    def close(self) -> None:
        drv = driver()
        if getattr(self, "_module", None) is not None:
            check(drv.cuModuleUnload(self._module), "cuModuleUnload")
            self._module = None
            dev = check(drv.cuDeviceGet(self.device), "cuDeviceGet")
            check(drv.cuDevicePrimaryCtxRelease(dev), "cuDevicePrimaryCtxRelease")


def reference_normalize(images_hwc: np.ndarray, norm: Normalization, swap_rb: bool) -> np.ndarray:
    """The CPU path's arithmetic for the same inputs (numpy, float32): what the kernel must equal."""
    imgs = images_hwc if images_hwc.ndim == 4 else images_hwc[None]
    if swap_rb and imgs.shape[3] == 3:
        imgs = imgs[..., ::-1]
    c = imgs.shape[3]
    t = imgs.astype(np.float32)
    t *= np.asarray(norm.mul[:c], np.float32)
    t += np.asarray(norm.add[:c], np.float32)
    return np.ascontiguousarray(t.transpose(0, 3, 1, 2))
