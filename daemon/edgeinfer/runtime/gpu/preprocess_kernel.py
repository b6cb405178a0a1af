"""Image normalization on the GPU: uint8 HWC (BGR/RGB/gray) -> float32 NCHW, ((v * scale) - mean) / std.

The same arithmetic as model/families/preprocess.py, which folds the formula into
`v * mul + add` with mul = scale / std and add = -mean / std in float32 and
applies it as two numpy operations (multiply, then add, each rounded). The
kernel does exactly that with `__fmul_rn` / `__fadd_rn`, which forbid the
compiler from contracting them into one fused multiply-add, so GPU and CPU
results are bit-identical, not merely close.

With `normalize_on = "gpu"` decoding and resizing stay on the CPU (OpenCV) and the
first kernel replaces the float conversion, normalization and HWC->CHW transpose,
writing straight into one slot of a batched device tensor. With `decode = "gpu"`
the second kernel also does the resize (and the reduced decode's block average)
from the image nvImageCodec decoded into device memory (gpu/decoding_runner.py). The
third does the same from a video frame NVDEC left in device memory as NV12, converting it
to BGR with OpenCV's own integer arithmetic first (streams/nvdec.py).

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

from edgeinfer.runtime.gpu.image_job import Nv12Surface, ResizeJob
from edgeinfer.runtime.gpu.memory import DeviceArray, DeviceBuffer, Stream, check, compute_capability, driver, nvrtc, require_device

KERNEL_NAME = "edgeinfer_hwc_u8_to_nchw_f32"
RESIZE_KERNEL_NAME = "edgeinfer_resize_u8_to_nchw_f32"
NV12_KERNEL_NAME = "edgeinfer_nv12_resize_to_nchw_f32"

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

// One pixel of the reduced image: the mean of a k x k block of the decoded one (k = 1: the
// pixel itself), the way a JPEG decoded at 1/k scale averages its blocks.
__device__ __forceinline__ float edgeinfer_sample(
    const unsigned char* src, int w, int h, int row, int ch, int k, int x, int y, int c)
{
    const int cc = ch == 1 ? 0 : c;
    if (k == 1) return (float)src[(long long)y * row + (long long)x * ch + cc];
    const int x0 = x * k, y0 = y * k;
    const int x1 = min(x0 + k, w), y1 = min(y0 + k, h);
    float sum = 0.f;
    for (int yy = y0; yy < y1; ++yy)
        for (int xx = x0; xx < x1; ++xx)
            sum += (float)src[(long long)yy * row + (long long)xx * ch + cc];
    return sum / (float)((x1 - x0) * (y1 - y0));
}

// A source image the resize reads pixel by pixel, 3 channels at a time.
// Decoded uint8 HWC (RGB/BGR/gray), with the reduced decode's k x k block average.
struct EdgeinferHwc {
    const unsigned char* src; int w, h, row, ch, k;
    __device__ __forceinline__ void px(int x, int y, float v[3]) const {
        for (int c = 0; c < 3; ++c) v[c] = edgeinfer_sample(src, w, h, row, ch, k, x, y, c);
    }
};

// A video frame as NVDEC leaves it: NV12 (the luma plane, then interleaved U and V at half
// resolution), converted to BGR as OpenCV's COLOR_YUV2BGR_NV12 does: BT.601 limited range in
// fixed point with 20 fractional bits, chroma of each 2x2 block shared, saturated to uint8.
// So a frame decoded on the GPU reaches the resize with the very pixels the CPU path's cv2
// conversion gives.
struct EdgeinferNv12 {
    const unsigned char* luma; const unsigned char* chroma; int row;
    __device__ __forceinline__ void px(int x, int y, float v[3]) const {
        const int yy = max(0, (int)luma[(long long)y * row + x] - 16) * 1220542;
        const unsigned char* uv = chroma + (long long)(y >> 1) * row + (x & ~1);
        const int u = (int)uv[0] - 128, w = (int)uv[1] - 128;
        const int half = 1 << 19;
        v[0] = (float)min(max((yy + half + 2116026 * u) >> 20, 0), 255);               // B
        v[1] = (float)min(max((yy + half - 852492 * w - 409993 * u) >> 20, 0), 255);   // G
        v[2] = (float)min(max((yy + half + 1673527 * w) >> 20, 0), 255);               // R
    }
};

// One output pixel (x, y) of a float32 NCHW image slot, resized from `s` on the way: the resize
// plan of model/families/preprocess.py (ResizePlan) with OpenCV's conventions, bilinear
// (half-pixel centres, edge clamp) down to half size and the area average below that
// (INTER_AREA), rounded to uint8 as the CPU path's cv2.resize rounds, then the same
// normalization as the first kernel. Output pixels outside the resized image take `pad`.
template <class Src>
__device__ __forceinline__ void edgeinfer_resize_px(
    const Src& s, int x, int y, int red_w, int red_h, int res_w, int res_h, int dx, int dy,
    float* __restrict__ dst, int out_w, int out_h, int swap_rb, float pad,
    float mul0, float mul1, float mul2, float add0, float add1, float add2)
{
    const int rx = x - dx, ry = y - dy;
    float v[3] = {pad, pad, pad};
    if (rx >= 0 && ry >= 0 && rx < res_w && ry < res_h) {
        const float fx = (float)red_w / (float)res_w, fy = (float)red_h / (float)res_h;
        float p[3];
        if (fx > 2.f || fy > 2.f) {
            const float sx0 = rx * fx, sx1 = fminf((rx + 1) * fx, (float)red_w);
            const float sy0 = ry * fy, sy1 = fminf((ry + 1) * fy, (float)red_h);
            float acc[3] = {0.f, 0.f, 0.f}, area = 0.f;
            for (int yy = (int)floorf(sy0); yy < (int)ceilf(sy1); ++yy) {
                const float wy = fminf(sy1, yy + 1.f) - fmaxf(sy0, (float)yy);
                for (int xx = (int)floorf(sx0); xx < (int)ceilf(sx1); ++xx) {
                    const float wgt = wy * (fminf(sx1, xx + 1.f) - fmaxf(sx0, (float)xx));
                    s.px(xx, yy, p);
                    for (int c = 0; c < 3; ++c) acc[c] += wgt * p[c];
                    area += wgt;
                }
            }
            for (int c = 0; c < 3; ++c) v[c] = acc[c] / area;
        } else {
            float sx = (rx + 0.5f) * fx - 0.5f, sy = (ry + 0.5f) * fy - 0.5f;
            int x0 = (int)floorf(sx), y0 = (int)floorf(sy);
            float ax = sx - x0, ay = sy - y0;
            if (x0 < 0) { x0 = 0; ax = 0.f; }
            if (y0 < 0) { y0 = 0; ay = 0.f; }
            if (x0 >= red_w - 1) { x0 = red_w - 1; ax = 0.f; }
            if (y0 >= red_h - 1) { y0 = red_h - 1; ay = 0.f; }
            const int x1 = min(x0 + 1, red_w - 1), y1 = min(y0 + 1, red_h - 1);
            float a[3], b[3], d[3], e[3];
            s.px(x0, y0, a); s.px(x1, y0, b); s.px(x0, y1, d); s.px(x1, y1, e);
            for (int c = 0; c < 3; ++c)
                v[c] = (a[c] * (1.f - ax) + b[c] * ax) * (1.f - ay) + (d[c] * (1.f - ax) + e[c] * ax) * ay;
        }
        for (int c = 0; c < 3; ++c) v[c] = fminf(fmaxf(floorf(v[c] + 0.5f), 0.f), 255.f);
    }
    const long long plane = (long long)out_h * out_w;
    float* out = dst + (long long)y * out_w + x;
    const float mul[3] = {mul0, mul1, mul2};
    const float add[3] = {add0, add1, add2};
    for (int c = 0; c < 3; ++c) {
        const int sc = swap_rb ? 2 - c : c;
        out[c * plane] = __fadd_rn(__fmul_rn(v[sc], mul[c]), add[c]);
    }
}

// Decoded uint8 HWC -> one image slot of a float32 NCHW batch, reduced, resized and normalized.
extern "C" __global__ void edgeinfer_resize_u8_to_nchw_f32(
    const unsigned char* __restrict__ src, int src_w, int src_h, int src_row_bytes, int src_channels,
    int k, int red_w, int red_h, int res_w, int res_h, int dx, int dy,
    float* __restrict__ dst, int out_w, int out_h, int swap_rb, float pad,
    float mul0, float mul1, float mul2, float add0, float add1, float add2)
{
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= out_w || y >= out_h) return;
    const EdgeinferHwc s = {src, src_w, src_h, src_row_bytes, src_channels, k};
    edgeinfer_resize_px(s, x, y, red_w, red_h, res_w, res_h, dx, dy, dst, out_w, out_h, swap_rb, pad,
                        mul0, mul1, mul2, add0, add1, add2);
}

// An NV12 video frame (BGR after conversion) -> one image slot of a float32 NCHW batch.
extern "C" __global__ void edgeinfer_nv12_resize_to_nchw_f32(
    const unsigned char* __restrict__ luma, const unsigned char* __restrict__ chroma, int row,
    int src_w, int src_h, int res_w, int res_h, int dx, int dy,
    float* __restrict__ dst, int out_w, int out_h, int swap_rb, float pad,
    float mul0, float mul1, float mul2, float add0, float add1, float add2)
{
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= out_w || y >= out_h) return;
    const EdgeinferNv12 s = {luma, chroma, row};
    edgeinfer_resize_px(s, x, y, src_w, src_h, res_w, res_h, dx, dy, dst, out_w, out_h, swap_rb, pad,
                        mul0, mul1, mul2, add0, add1, add2);
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
            self._resize_function = check(drv.cuModuleGetFunction(self._module, RESIZE_KERNEL_NAME.encode()),
                                          "cuModuleGetFunction")
            self._nv12_function = check(drv.cuModuleGetFunction(self._module, NV12_KERNEL_NAME.encode()),
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
        args = ((src.ptr, dst.ptr, h, w, c, row, row * h, int(bool(swap_rb)), *norm.mul, *norm.add),
                (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                 ctypes.c_int, ctypes.c_int, ctypes.c_float, ctypes.c_float, ctypes.c_float,
                 ctypes.c_float, ctypes.c_float, ctypes.c_float))
        self._launch(self._function, KERNEL_NAME, w, h, n, args, stream)

    def _launch(self, function, name: str, w: int, h: int, n: int, args, stream: Stream) -> None:
        """One thread per output pixel of a w x h image, n images, on `stream`, in the kernels' context."""
        drv = driver()
        bx, by, _ = self.BLOCK
        check(drv.cuCtxSetCurrent(self._context), "cuCtxSetCurrent")
        check(drv.cuLaunchKernel(function, (w + bx - 1) // bx, (h + by - 1) // by, n, *self.BLOCK, 0,
                                 drv.CUstream(stream.ptr), args, 0), f"cuLaunchKernel({name})")

    @staticmethod
    def _slot(dst: DeviceArray, index: int) -> tuple[int, int, int]:
        """(address, width, height) of image `index` of a float32 [N, 3, H, W] destination."""
        n, oc, oh, ow = dst.shape
        if dst.dtype != np.float32 or oc != 3 or not 0 <= index < n:
            raise ValueError(f"destination must be float32 [N, 3, H, W] with slot {index}, got {dst.dtype} {list(dst.shape)}")
        return dst.ptr + index * 3 * oh * ow * 4, ow, oh

    def launch_resize(self, src_ptr: int, src_shape: tuple[int, int, int], src_row_bytes: int, job: ResizeJob,
                      dst: DeviceArray, index: int, norm: Normalization, pad: float, stream: Stream) -> None:
        """Enqueue: one decoded uint8 H, W, C image (C 1 or 3) at `src_ptr` -> slot `index` of float32
        dst [N, 3, H, W], reduced, resized and placed as `job` says, normalized (asynchronous on `stream`).

        Raises:
            ValueError: shapes do not match the job.
            CudaError: the launch failed.
        """
        h, w, c = src_shape
        out_ptr, ow, oh = self._slot(dst, index)
        if c not in (1, 3):
            raise ValueError(f"decoded image has {c} channels; 1 or 3 expected")
        red_w, red_h = -(-w // job.reduce), -(-h // job.reduce)
        if (red_w, red_h) != (job.reduced_w, job.reduced_h):
            raise ValueError(f"decoded {w}x{h} at 1/{job.reduce} is {red_w}x{red_h}, the plan expected "
                             f"{job.reduced_w}x{job.reduced_h}")
        args = ((src_ptr, w, h, src_row_bytes, c, job.reduce, red_w, red_h, job.resized_w, job.resized_h,
                 job.dx, job.dy, out_ptr, ow, oh, int(bool(job.swap_rb)), float(pad), *norm.mul, *norm.add),
                (ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                 ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                 ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_float,
                 ctypes.c_float, ctypes.c_float, ctypes.c_float, ctypes.c_float, ctypes.c_float, ctypes.c_float))
        self._launch(self._resize_function, RESIZE_KERNEL_NAME, ow, oh, 1, args, stream)

    def launch_nv12_resize(self, frame: Nv12Surface, job: ResizeJob, dst: DeviceArray, index: int,
                           norm: Normalization, pad: float, stream: Stream) -> None:
        """Enqueue: one NV12 video frame in device memory -> slot `index` of float32 dst [N, 3, H, W],
        converted to BGR as cv2's COLOR_YUV2BGR_NV12 does, resized and placed as `job` says (its
        reduce is 1, its swap_rb relative to BGR), normalized (asynchronous on `stream`).

        Raises:
            ValueError: shapes do not match the job.
            CudaError: the launch failed.
        """
        out_ptr, ow, oh = self._slot(dst, index)
        if job.reduce != 1 or (frame.width, frame.height) != (job.reduced_w, job.reduced_h):
            raise ValueError(f"a {frame.width}x{frame.height} frame does not match the plan's "
                             f"{job.reduced_w}x{job.reduced_h} at 1/{job.reduce}")
        args = ((frame.luma, frame.chroma, frame.pitch, frame.width, frame.height, job.resized_w, job.resized_h,
                 job.dx, job.dy, out_ptr, ow, oh, int(bool(job.swap_rb)), float(pad), *norm.mul, *norm.add),
                (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                 ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                 ctypes.c_int, ctypes.c_float, ctypes.c_float, ctypes.c_float, ctypes.c_float, ctypes.c_float,
                 ctypes.c_float, ctypes.c_float))
        self._launch(self._nv12_function, NV12_KERNEL_NAME, ow, oh, 1, args, stream)

    def nv12_resize_normalize(self, nv12: np.ndarray, job: ResizeJob, out_hw: tuple[int, int],
                              norm: Normalization, pad: float, stream: Stream) -> np.ndarray:
        """Host NV12 ([H * 3 / 2, W] uint8) in, host out (synchronous), one frame: for checks against the CPU path."""
        planes = np.ascontiguousarray(nv12)
        h, w = planes.shape[0] * 2 // 3, planes.shape[1]
        src = DeviceArray.from_host(planes, stream, self.device)
        oh, ow = out_hw
        out = DeviceBuffer(3 * oh * ow * 4, self.device)
        try:
            dst = DeviceArray(out, np.float32, (1, 3, oh, ow))
            frame = Nv12Surface(w, h, w, src.ptr, src.ptr + w * h, self.device, owner=src)
            self.launch_nv12_resize(frame, job, dst, 0, norm, pad, stream)
            return dst.to_host(stream)
        finally:
            out.close()
            src.buffer.close()

    def resize_normalize(self, image_hwc: np.ndarray, job: ResizeJob, out_hw: tuple[int, int],
                         norm: Normalization, pad: float, stream: Stream) -> np.ndarray:
        """Host in, host out (synchronous), one image: for checks against the CPU path."""
        img = np.ascontiguousarray(image_hwc if image_hwc.ndim == 3 else image_hwc[:, :, None])
        src = DeviceArray.from_host(img, stream, self.device)
        oh, ow = out_hw
        out = DeviceBuffer(3 * oh * ow * 4, self.device)
        try:
            dst = DeviceArray(out, np.float32, (1, 3, oh, ow))
            self.launch_resize(src.ptr, img.shape, img.shape[1] * img.shape[2], job, dst, 0, norm, pad, stream)
            return dst.to_host(stream)
        finally:
            out.close()
            src.buffer.close()

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


def _axis_weights(red: int, res: int, area: bool) -> np.ndarray:
    """[res, red] weights of one axis of the resize kernel: bilinear with OpenCV's half-pixel centres and
    edge clamp, or (area) the overlap of each output pixel's footprint with each source pixel."""
    f = red / res
    wts = np.zeros((res, red), np.float64)
    r = np.arange(res)
    if area:
        s0, s1 = r * f, np.minimum((r + 1) * f, red)
        for i in range(res):
            for x in range(int(np.floor(s0[i])), int(np.ceil(s1[i]))):
                wts[i, x] = min(s1[i], x + 1.0) - max(s0[i], float(x))
        return wts
    s = (r + 0.5) * f - 0.5
    x0 = np.floor(s).astype(int)
    a = s - x0
    a[x0 < 0], x0[x0 < 0] = 0.0, 0
    hi = x0 >= red - 1
    a[hi], x0[hi] = 0.0, red - 1
    x1 = np.minimum(x0 + 1, red - 1)
    np.add.at(wts, (r, x0), 1.0 - a)
    np.add.at(wts, (r, x1), a)
    return wts


def reference_resize(image_hwc: np.ndarray, job: ResizeJob, out_hw: tuple[int, int], norm: Normalization,
                     pad: float) -> np.ndarray:
    """The resize kernel's arithmetic in numpy (float64, so a value at a rounding boundary may land one
    level apart): decoded uint8 H, W, C -> float32 [3, H, W]. The GPU tests hold the kernel to it, and
    the CPU tests hold it to the CPU path (cv2)."""
    img = image_hwc if image_hwc.ndim == 3 else image_hwc[:, :, None]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    img = img.astype(np.float64)
    k = job.reduce
    if k > 1:
        h, w = img.shape[:2]
        rows, cols = np.arange(0, h, k), np.arange(0, w, k)
        sums = np.add.reduceat(np.add.reduceat(img, rows, axis=0), cols, axis=1)
        counts = np.outer(np.minimum(rows + k, h) - rows, np.minimum(cols + k, w) - cols)
        img = sums / counts[:, :, None]
    red_h, red_w = img.shape[:2]
    area = red_w / job.resized_w > 2 or red_h / job.resized_h > 2
    wy, wx = _axis_weights(red_h, job.resized_h, area), _axis_weights(red_w, job.resized_w, area)
    resized = np.matmul(wx[None], np.tensordot(wy, img, axes=(1, 0)))  # [Y, X, C], two passes
    if area:
        resized /= np.outer(wy.sum(1), wx.sum(1))[:, :, None]
    resized = np.clip(np.floor(resized + 0.5), 0, 255)
    oh, ow = out_hw
    canvas = np.full((oh, ow, 3), float(pad))
    ys, xs = np.arange(oh) - job.dy, np.arange(ow) - job.dx
    vy, vx = (ys >= 0) & (ys < job.resized_h), (xs >= 0) & (xs < job.resized_w)
    canvas[np.ix_(vy, vx)] = resized[np.ix_(ys[vy], xs[vx])]
    if job.swap_rb:
        canvas = canvas[:, :, ::-1]
    t = canvas.astype(np.float32)
    t *= np.asarray(norm.mul, np.float32)
    t += np.asarray(norm.add, np.float32)
    return np.ascontiguousarray(t.transpose(2, 0, 1))


def reference_nv12_to_bgr(nv12: np.ndarray) -> np.ndarray:
    """The NV12 kernel's colour conversion in numpy: [H * 3 / 2, W] uint8 -> BGR [H, W, 3] uint8, in
    the integer arithmetic of cv2's COLOR_YUV2BGR_NV12 (BT.601 limited range, 20-bit fixed point),
    so the CPU tests hold it to cv2 and the GPU tests hold the kernel to it."""
    h, w = nv12.shape[0] * 2 // 3, nv12.shape[1]
    y = np.maximum(nv12[:h].astype(np.int64) - 16, 0) * 1220542
    uv = nv12[h:].reshape(h // 2, w // 2, 2).astype(np.int64) - 128
    u = uv[..., 0].repeat(2, axis=0).repeat(2, axis=1)
    v = uv[..., 1].repeat(2, axis=0).repeat(2, axis=1)
    half = 1 << 19
    b = (y + half + 2116026 * u) >> 20
    g = (y + half - 852492 * v - 409993 * u) >> 20
    r = (y + half + 1673527 * v) >> 20
    return np.clip(np.stack([b, g, r], axis=2), 0, 255).astype(np.uint8)
