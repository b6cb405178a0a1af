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

import functools
import logging
from typing import Mapping, Optional

import numpy as np

from edgeinfer.runtime.base import DescribedRunner, Runner, RunnerInfo, TensorSpec
from edgeinfer.errors import InferenceError
from edgeinfer.runtime.gpu.slots import Slot, SlotPool

log = logging.getLogger(__name__)


def why_not_on_gpu(runner: Runner, input_cfg) -> Optional[str]:
    """None when GPU normalization can serve this runner and input config; else the reason it cannot."""
    if input_cfg.layout != "NCHW" or input_cfg.dtype != "float32":
        return f"the kernel writes float32 NCHW; this input is {input_cfg.dtype} {input_cfg.layout}"
    info = runner.info
    if info.backend != "onnxruntime" or not info.device.startswith("cuda"):
        return f"needs ONNX Runtime's CUDA provider; the model runs on {info.backend} ({info.device})"
    from edgeinfer.runtime.gpu.memory import why_unreachable

    return why_unreachable(info.device)


class GpuNormalizingRunner(DescribedRunner):
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
        from edgeinfer.runtime.onnxruntime.runner import CudaIoBinding
        from edgeinfer.runtime.gpu.preprocess_kernel import PreprocessKernel

        self.inner = runner
        self.image_name = image_name
        self.norm = norm
        self.swap_rb = swap_rb
        spec = next(s for s in runner.inputs if s.name == image_name)
        n, c, h, w = spec.shape
        self.channels = c
        self._inputs = [TensorSpec(s.name, np.dtype(np.uint8), (n, h, w, c)) if s.name == image_name else s
                        for s in runner.inputs]
        self._outputs = list(runner.outputs)
        slots = max(1, int(runner.info.max_concurrency or 1))
        self._io = runner.io_binding or CudaIoBinding(runner.session, runner.inputs, runner.outputs, slots)
        self.device = self._io.device
        self.kernel = kernel or PreprocessKernel(self.device)
        inner_info = runner.info
        self._info = RunnerInfo(backend=inner_info.backend, precision=inner_info.precision,
                                device=inner_info.device, max_batch=inner_info.max_batch,
                                max_concurrency=inner_info.max_concurrency,
                                details=dict(inner_info.details, normalize_on="gpu (NVRTC kernel, IO binding)"))
        # Staging (stream, pinned, uint8 and float buffers) per concurrent call; run_device then
        # takes one of the IO binding's own slots as well.
        self._stages: SlotPool[Slot] = SlotPool(slots, functools.partial(Slot, self.device))
        self.active = runner.active  # the loader activated the inner runner; deactivate() must reach it

    # -- inference ------------------------------------------------------------------------
    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from edgeinfer.runtime.gpu.memory import DeviceArray, use_device

        use_device(self.device)
        stage = self._stages.acquire()
        try:
            device_feeds = {}
            for name, arr in feeds.items():
                src = stage.upload(name, arr)
                if name != self.image_name:
                    device_feeds[name] = src
                    continue
                n, h, w, c = src.shape
                out = stage.buffer("dev", name + ":float", n * c * h * w * 4)
                dst = DeviceArray(out, np.float32, (n, c, h, w))
                self.kernel.launch(src, dst, self.norm, self.swap_rb, stage.stream)
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
            self._stages.release(stage)

    # -- lifecycle --------------------------------------------------------------------------
    def activate_impl(self) -> None:
        self.inner.activate()

    def deactivate_impl(self) -> None:
        self._stages.close()
        if self._io is not self.inner.io_binding:
            self._io.close()
        self.kernel.close()
        self.inner.deactivate()
