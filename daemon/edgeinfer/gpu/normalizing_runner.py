"""A runner whose image input is uint8: normalization runs on the GPU, into the model's device input.

`[models.input] normalize_on = "gpu"` wraps the ONNX Runtime CUDA runner in
this. The served model then hands it uint8 N,H,W,C images (decoded and resized
on the CPU, still in BGR where the model wants RGB); per call it

1. copies the batch into a pinned staging buffer and then to the device on
   its own stream (uint8: a quarter of the float bytes),
2. launches the NVRTC kernel (gpu/preprocess_kernel.py) that converts,
   normalizes, swaps B and R and lays the batch out as float32 N,C,H,W in a
   device buffer, bit-identical to the CPU path,
3. binds that buffer as the model input through IO binding
   (`CudaIoBinding.run_device`) on the session the batch size calls for.

What leaves the GIL-holding worker threads is the float work: the conversion,
the normalization and the transpose, ~0.5 ms of numpy per 224x224 image, and
more for bigger inputs.

The wrapper advertises the image input as uint8 [N, H, W, C], so warm-up,
batching (stacking, bucket padding) and input checks all work on the uint8
images unchanged. Clients that send raw tensors to such a model send uint8
NHWC for that input (GetModel shows it).
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Mapping, Optional

import numpy as np

from ..backends.base import Runner, RunnerInfo, TensorSpec
from ..errors import InferenceError

log = logging.getLogger(__name__)


class _Stage:
    """One call's device resources: a stream, pinned staging, uint8 and float device buffers."""

    def __init__(self, device: int):
        from .memory import Stream

        self.device = device
        self.stream = Stream(device)
        self.buffers: dict[str, object] = {}

    def buffer(self, kind: str, name: str, nbytes: int):
        from .memory import DeviceBuffer, PinnedBuffer

        key = f"{kind}:{name}"
        buf = self.buffers.get(key)
        if buf is None:
            buf = self.buffers[key] = (PinnedBuffer if kind == "pin" else DeviceBuffer)(nbytes, self.device)
        buf.ensure(nbytes)
        return buf

    def close(self) -> None:
        for b in self.buffers.values():
            b.close()
        self.buffers.clear()
        self.stream.close()


def why_not_on_gpu(runner: Runner, input_cfg) -> Optional[str]:
    """None when GPU normalization can serve this runner and input config; else the reason it cannot."""
    if input_cfg.layout != "NCHW" or input_cfg.dtype != "float32":
        return f"the kernel writes float32 NCHW; this input is {input_cfg.dtype} {input_cfg.layout}"
    info = runner.info
    if info.backend != "onnxruntime" or not info.device.startswith("cuda"):
        return f"needs ONNX Runtime's CUDA provider; the model runs on {info.backend} ({info.device})"
    try:
        from .memory import require_device

        require_device(0)
    except Exception as exc:  # noqa: BLE001 - no cuda-python, no driver: say so
        return f"cuda-python cannot reach the GPU: {exc}"
    return None


class GpuNormalizingRunner(Runner):
    """Wraps an ONNX Runtime CUDA runner; the image input `image_name` becomes uint8 [N, H, W, C].

    Args:
        runner: the OnnxRuntimeRunner (CUDA provider) that runs the model.
        image_name: the model's image input (float32 [N, C, H, W]).
        norm: gpu.preprocess_kernel.Normalization from the input config.
        swap_rb: images arrive BGR and the model wants RGB.
        kernel: a PreprocessKernel (compiled here on the runner's device when not given).
    """

    def __init__(self, runner: Runner, image_name: str, norm, swap_rb: bool, kernel=None):
        super().__init__()
        from ..backends.onnxruntime.runner import CudaIoBinding
        from .preprocess_kernel import PreprocessKernel

        self.inner = runner
        self.image_name = image_name
        self.norm = norm
        self.swap_rb = swap_rb
        spec = next(s for s in runner.inputs if s.name == image_name)
        n, c, h, w = spec.shape
        self.channels = c
        self._inputs = [TensorSpec(s.name, np.dtype(np.uint8), (n, h, w, c)) if s.name == image_name else s
                        for s in runner.inputs]
        slots = max(1, int(runner.info.max_concurrency or 1))
        self._io = runner.io_binding or CudaIoBinding(runner.session, runner.inputs, runner.outputs, slots)
        self.device = self._io.device
        self.kernel = kernel or PreprocessKernel(self.device)
        inner_info = runner.info
        self._info = RunnerInfo(backend=inner_info.backend, precision=inner_info.precision,
                                device=inner_info.device, max_batch=inner_info.max_batch,
                                max_concurrency=inner_info.max_concurrency,
                                details=dict(inner_info.details, normalize_on="gpu (NVRTC kernel, IO binding)"))
        self._free: queue.Queue = queue.Queue()
        self._stages: list[_Stage] = []
        self._max = slots
        self._lock = threading.Lock()
        self.active = runner.active  # the loader activated the inner runner; deactivate() must reach it

    # -- description ------------------------------------------------------------------
    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.inner.outputs

    @property
    def info(self) -> RunnerInfo:
        return self._info

    # -- stages -------------------------------------------------------------------------
    def _acquire(self) -> _Stage:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if len(self._stages) < self._max:
                stage = _Stage(self.device)
                self._stages.append(stage)
                return stage
        return self._free.get()

    # -- inference ------------------------------------------------------------------------
    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .memory import DeviceArray, use_device

        use_device(self.device)
        stage = self._acquire()
        try:
            device_feeds = {}
            for name, arr in feeds.items():
                arr = np.ascontiguousarray(arr)
                pin = stage.buffer("pin", name, arr.nbytes)
                np.copyto(pin.view(arr.dtype, arr.shape), arr)
                raw = stage.buffer("dev", name, arr.nbytes)
                raw.copy_from_host(pin, arr.nbytes, stage.stream)
                if name != self.image_name:
                    device_feeds[name] = DeviceArray(raw, arr.dtype, arr.shape)
                    continue
                n, h, w, c = arr.shape
                out = stage.buffer("dev", name + ":float", n * c * h * w * 4)
                dst = DeviceArray(out, np.float32, (n, c, h, w))
                self.kernel.launch(DeviceArray(raw, np.uint8, arr.shape), dst, self.norm, self.swap_rb,
                                   stage.stream)
                device_feeds[name] = dst
            # run_device reads the inputs on ORT's stream: ours must be done first.
            stage.stream.synchronize()
            session = self.inner.session_for(feeds)
            return self._io.run_device(device_feeds, session)
        except InferenceError:
            raise
        except Exception as exc:  # noqa: BLE001 - CUDA and ORT errors alike
            raise InferenceError(f"GPU normalization + onnxruntime failed: {exc}") from exc
        finally:
            self._free.put(stage)

    # -- lifecycle --------------------------------------------------------------------------
    def activate_impl(self) -> None:
        self.inner.activate()

    def deactivate_impl(self) -> None:
        with self._lock:
            for stage in self._stages:
                stage.close()
            self._stages.clear()
        if self._io is not self.inner.io_binding:
            self._io.close()
        self.kernel.close()
        self.inner.deactivate()
