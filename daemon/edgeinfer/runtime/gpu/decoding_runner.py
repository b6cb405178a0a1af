"""A runner whose image input is encoded images: decode, resize and normalize on the GPU.

`[models.input] decode = "gpu"` (or "auto" where it can run) wraps the ONNX
Runtime CUDA runner (or the TensorRT runner) in this. The served model hands it a 1-D object array of
gpu.image_job.ResizeJob per batch (JPEG/PNG bytes and their resize plan, pixels
the CPU decoded for other formats, or a stream's video frame NVDEC left in GPU
memory as NV12, which the NV12 kernel converts and resizes in place); per call it

1. decodes every encoded image of the batch in one nvImageCodec call into GPU
   memory, on its own stream (EXIF orientation applied, interleaved RGB),
2. launches the NVRTC resize kernel (gpu/preprocess_kernel.py) once per image:
   the reduced decode's block average, bilinear or area resize, letterbox padding
   or center crop, channel order, normalization and the NCHW layout, written
   into that image's slot of one float32 device tensor,
3. hands that tensor to the runtime where it lies: ONNX Runtime through IO binding
   (`CudaIoBinding.run_device`) on the session the batch size calls for, or a TensorRT
   engine through its tensor address (`TensorRTRunner.run_device`, written from
   NVIDIA's documentation like the rest of the TensorRT execute path, not yet run).

No pixel crosses to the host and back: what leaves the CPU is the JPEG decode,
the resize and the float work, which bound a 16-core host at ~2,600 img/s for
ResNet-50 on an H100 (docs/performance.md).

An image nvImageCodec cannot decode (corrupt data the header check let through, a
format it has no plugin for) is decoded by OpenCV on the CPU instead and goes through
the same kernel; only an image neither can decode fails the call.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import replace
from typing import Mapping, Optional

import numpy as np

from edgeinfer.errors import InferenceError
from edgeinfer.runtime.base import DescribedRunner, Runner, RunnerInfo, TensorSpec
from edgeinfer.runtime.gpu.image_job import ResizeJob
from edgeinfer.runtime.gpu.slots import Slot, SlotPool

log = logging.getLogger(__name__)

DECODER = "nvImageCodec"


def nvimgcodec():
    """The nvImageCodec Python module (raises ImportError where the wheel is absent)."""
    from nvidia import nvimgcodec as module  # type: ignore[import-not-found]

    return module


def why_not_decode_on_gpu(runner: Runner, input_cfg) -> Optional[str]:
    """None when the GPU decode path can serve this runner and input config; else the reason it cannot.

    With `[server] inference = "shared"` the inference process wraps its runner in this and the
    front-ends send it the images' bytes (serving/shared/wire.py): one CUDA context decodes for all.
    """
    if input_cfg.layout != "NCHW" or input_cfg.dtype != "float32":
        return f"the resize kernel writes float32 NCHW; this input is {input_cfg.dtype} {input_cfg.layout}"
    if input_cfg.color == "gray":
        return "the resize kernel writes 3 channels; this input is gray"
    info = runner.info
    if info.backend not in ("onnxruntime", "tensorrt") or not info.device.startswith("cuda"):
        return f"needs ONNX Runtime's CUDA provider or TensorRT; the model runs on {info.backend} ({info.device})"
    from edgeinfer.runtime.gpu.memory import why_unreachable

    unreachable = why_unreachable(info.device)
    if unreachable:
        return unreachable
    try:
        nvimgcodec()
    except Exception as exc:  # noqa: BLE001 - ImportError, or a library that fails to load
        return f"{DECODER} is not installed ({type(exc).__name__}: {exc}); pip install nvidia-nvimgcodec-cu13 " \
               f"(-cu12, or -tegra-cu12 on Jetson)"
    return None


class _DecodeSlot(Slot):
    """A Slot (stream and buffers) with its own nvImageCodec decoder: no two calls share one."""

    def __init__(self, device: int):
        super().__init__(device)
        nv = nvimgcodec()
        self.decoder = nv.Decoder(device_id=device)
        try:
            self.params = nv.DecodeParams(apply_exif_orientation=True, color_spec=nv.ColorSpec.SRGB,
                                          sample_format=nv.SampleFormat.I_RGB)
        except (AttributeError, TypeError):  # an older nvImageCodec: its defaults are sRGB, interleaved
            self.params = nv.DecodeParams(apply_exif_orientation=True)

    def decode(self, data: list[bytes]) -> list:
        return self.decoder.decode(data, params=self.params, cuda_stream=self.stream.ptr)


def device_image(image) -> tuple[int, tuple[int, int, int], int]:
    """(pointer, (h, w, c), row bytes) of a decoded nvImageCodec image in device memory."""
    cai = image.__cuda_array_interface__
    shape = tuple(int(d) for d in cai["shape"])
    if len(shape) == 2:
        shape = shape + (1,)
    h, w, c = shape
    strides = cai.get("strides")
    row = int(strides[0]) if strides else w * c
    return int(cai["data"][0]), (h, w, c), row


class GpuDecodingRunner(DescribedRunner):
    """Wraps an ONNX Runtime CUDA runner; the image input `image_name` becomes a 1-D object array of ResizeJobs.

    Args:
        runner: the OnnxRuntimeRunner (CUDA provider) that runs the model.
        image_name: the model's image input (float32 [N, 3, H, W]).
        norm: gpu.preprocess_kernel.Normalization from the input config.
        pad_value: letterbox padding (0-255).
        size: (width, height) of the model input ([models.input] size; the model's own may be dynamic).
        kernel: a PreprocessKernel (compiled here on the runner's device when not given).
    """

    def __init__(self, runner: Runner, image_name: str, norm, pad_value: int, size: tuple[int, int], kernel=None):
        super().__init__()
        from edgeinfer.runtime.gpu.preprocess_kernel import PreprocessKernel

        self.inner = runner
        self.image_name = image_name
        self.norm = norm
        self.pad = float(pad_value)
        spec = next(s for s in runner.inputs if s.name == image_name)
        n, c, h, w = spec.shape
        if c != 3:
            raise ValueError(f"input {image_name!r} has {c} channels; the GPU decode path writes 3")
        self.out_hw = (int(size[1]), int(size[0]))
        self._inputs = [TensorSpec(s.name, np.dtype(object), (n,)) if s.name == image_name else s
                        for s in runner.inputs]
        self._outputs = list(runner.outputs)
        slots = max(1, int(runner.info.max_concurrency or 1))
        self._target = _device_target(runner, slots)
        self.device = self._target.device
        self.kernel = kernel or PreprocessKernel(self.device)
        inner_info = runner.info
        self._info = RunnerInfo(backend=inner_info.backend, precision=inner_info.precision,
                                device=inner_info.device, max_batch=inner_info.max_batch,
                                max_concurrency=inner_info.max_concurrency,
                                details=dict(inner_info.details, decode_on=f"gpu ({DECODER}, NVRTC resize kernel)",
                                             normalize_on="gpu (NVRTC resize kernel, IO binding)"))
        self._stages: SlotPool[_DecodeSlot] = SlotPool(slots, functools.partial(_DecodeSlot, self.device))
        self._stages.release(self._stages.acquire())  # a decoder now: a failure shows at load, not on a request
        self.active = runner.active

    # -- inference ------------------------------------------------------------------------
    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from edgeinfer.runtime.gpu.memory import use_device

        use_device(self.device)
        stage = self._stages.acquire()
        keep: list = []  # decoded images and uploads, alive until the stream has read them
        try:
            device_feeds = {}
            for name, arr in feeds.items():
                if name == self.image_name:
                    device_feeds[name] = self._images(stage, arr, keep)
                else:
                    device_feeds[name] = stage.upload(name, arr)
            # The runtime reads the inputs on its own stream: ours must be done first.
            stage.stream.synchronize()
            return self._target.run(device_feeds, feeds)
        except InferenceError:
            raise
        except Exception as exc:  # noqa: BLE001 - CUDA, nvImageCodec, ORT and TensorRT errors alike
            raise InferenceError(f"GPU decode + {self.inner.info.backend} failed: {exc}") from exc
        finally:
            stage.stream.synchronize()
            keep.clear()
            self._stages.release(stage)

    def _images(self, stage: _DecodeSlot, jobs: np.ndarray, keep: list):
        """Decode the batch's encoded images (each distinct one once) and resize every job into its slot."""
        from edgeinfer.runtime.gpu.memory import DeviceArray

        n = int(jobs.shape[0])
        h, w = self.out_hw
        out = stage.buffer("dev", self.image_name + ":float", n * 3 * h * w * 4)
        dst = DeviceArray(out, np.float32, (n, 3, h, w))
        distinct: dict[int, int] = {}  # id(job) -> index among the decoded (padding repeats the last row)
        encoded: list[ResizeJob] = []
        for job in jobs:
            self._check(job)
            if job.data and id(job) not in distinct:
                distinct[id(job)] = len(encoded)
                encoded.append(job)
        decoded = stage.decode([j.data for j in encoded]) if encoded else []
        keep.append(decoded)
        for i, job in enumerate(jobs):
            if job.frame is not None and job.frame.device == self.device:
                # A video frame NVDEC left on this GPU: converted and resized where it lies.
                keep.append(job.frame)
                self.kernel.launch_nv12_resize(job.frame, job, dst, i, self.norm, self.pad, stage.stream)
                continue
            if job.frame is not None:  # decoded on another GPU: through the host, as pixels
                job = replace(job, pixels=job.frame.to_bgr(), frame=None)
            image = decoded[distinct[id(job)]] if job.data else None
            if job.data and image is not None:
                ptr, shape, row = device_image(image)
                swap = job.swap_rb
            else:
                pixels = job.pixels if job.pixels is not None else self._cpu_decode(job)
                swap = job.swap_rb if job.pixels is not None else not job.swap_rb  # OpenCV gives BGR
                src = stage.upload(f"pixels{i}", pixels if pixels.ndim == 3 else pixels[:, :, None])
                keep.append(src)
                ptr, shape, row = src.ptr, src.shape, src.shape[1] * src.shape[2]
            if swap != job.swap_rb:
                job = _with_swap(job, swap)
            self.kernel.launch_resize(ptr, shape, row, job, dst, i, self.norm, self.pad, stage.stream)
        return dst

    @staticmethod
    def _check(job) -> None:
        if not isinstance(job, ResizeJob):
            raise InferenceError(f"the image input takes encoded images (ResizeJob), got {type(job).__name__}")

    @staticmethod
    def _cpu_decode(job: ResizeJob) -> np.ndarray:
        """OpenCV's decode of an image nvImageCodec refused, at the job's reduction (BGR)."""
        import cv2

        flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                 8: cv2.IMREAD_REDUCED_COLOR_8}[job.reduce]
        img = cv2.imdecode(np.frombuffer(job.data, np.uint8), flags)
        if img is None:
            raise InferenceError(f"an image of {len(job.data)} bytes could not be decoded by {DECODER} or OpenCV")
        log.info("%s could not decode an image of %d bytes; OpenCV decoded it", DECODER, len(job.data))
        return img

    # -- lifecycle --------------------------------------------------------------------------
    def activate_impl(self) -> None:
        self.inner.activate()

    def deactivate_impl(self) -> None:
        self._stages.close()
        self._target.close()
        self.kernel.close()
        self.inner.deactivate()


class _OrtTarget:
    """ONNX Runtime's CUDA session through IO binding on our device buffers."""

    def __init__(self, runner, slots: int):
        from edgeinfer.runtime.onnxruntime.runner import CudaIoBinding

        self.runner = runner
        self.io = runner.io_binding or CudaIoBinding(runner.session, runner.inputs, runner.outputs, slots)
        self.device = self.io.device

    def run(self, device_feeds: Mapping, feeds: Mapping) -> dict[str, np.ndarray]:
        return self.io.run_device(device_feeds, self.runner.session_for(feeds))

    def close(self) -> None:
        if self.io is not self.runner.io_binding:
            self.io.close()


class _TensorRTTarget:
    """A TensorRT engine reading the input tensor where the kernel wrote it (TensorRTRunner.run_device)."""

    def __init__(self, runner):
        self.runner = runner
        self.device = runner.device_index

    def run(self, device_feeds: Mapping, feeds: Mapping) -> dict[str, np.ndarray]:
        return self.runner.run_device(device_feeds)

    def close(self) -> None:
        pass


def _device_target(runner: Runner, slots: int):
    """Where the decoded batch goes: the runtime's own way of taking inputs in device memory."""
    if runner.info.backend == "tensorrt":
        return _TensorRTTarget(runner)
    return _OrtTarget(runner, slots)


def _with_swap(job: ResizeJob, swap: bool) -> ResizeJob:
    """`job` for a CPU-decoded stand-in: already at the reduced size, channels as OpenCV gives them."""
    return replace(job, swap_rb=swap, reduce=1)
