"""Runs an ONNX Runtime session. ORT sessions allow concurrent Run() calls.

On the CUDA execution provider the runner can bind inputs and outputs to its
own device buffers (IO binding, `CudaIoBinding`): host feeds are copied
host -> pinned -> device on the runner's own stream, outputs of known shape
land in our device buffers and come back through pinned memory, and feeds that
are already on the device (`run_device`, e.g. from the GPU preprocessing
kernel) are bound with no copy at all. The CPU path is plain `session.run`.

Binding host feeds is off unless asked for (io_binding=True): measured on an
H200 with EfficientNet-Lite0 (docs/benchmarks/gpu-*.md), the extra copy into
pinned memory made a call slower than ORT's own copies (batch 1: 0.90 vs
0.77 ms; batch 32: 4.97 vs 4.40 ms). Its worth is the device-fed path.
"""
from __future__ import annotations

import functools
import logging
import re
import weakref
from typing import Mapping, Optional

import numpy as np

from edgeinfer.errors import InferenceError
from edgeinfer.runtime.gpu.slots import Slot, SlotPool
from edgeinfer.runtime.base import BoundCall, DescribedRunner, RunnerInfo, TensorSpec
from edgeinfer.runtime.onnxruntime.bound_call import CpuBoundCall

log = logging.getLogger(__name__)

# ONNX Runtime type strings -> numpy dtypes.
_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


def _spec(node) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape)
    return TensorSpec(node.name, np.dtype(_ORT_TYPES.get(node.type, np.float32)), shape)


class CudaIoBinding:
    """IO binding of one CUDA-EP session on edgeinfer's device buffers (cuda-python).

    Up to `slots` calls run at once, each with its own stream and buffers, so
    concurrent requests never share a buffer. Outputs whose shape is known
    once the batch size is (e.g. [N, 1000]) are bound to our buffers; others
    (e.g. a detector's [N, 1, H/4, W/4] with dynamic H, W) are allocated by ORT
    on the device and copied back by it.

    Ordering: our host->device copies are on our stream, which is synchronized
    before Run(); ORT synchronizes its own stream at the end of Run() (its
    default), so the outputs are complete when we copy them back on our stream.
    """

    def __init__(self, session, inputs: list[TensorSpec], outputs: list[TensorSpec], slots: int):
        from edgeinfer.runtime.gpu.memory import require_device

        opts = session.get_provider_options().get("CUDAExecutionProvider", {})
        self.device = int(opts.get("device_id", 0))
        require_device(self.device)
        self.session = session
        self.inputs = {s.name: s for s in inputs}
        self.outputs = outputs
        self._slots: SlotPool[Slot] = SlotPool(slots, functools.partial(Slot, self.device))

    # -- inference -----------------------------------------------------------------
    def run(self, feeds: Mapping[str, np.ndarray], session=None) -> dict[str, np.ndarray]:
        """Host arrays in, host arrays out, through pinned memory and our device buffers.

        `session`: another session of the same model (one pinned to this batch size); default ours.
        """
        from edgeinfer.runtime.gpu.memory import use_device

        use_device(self.device)
        slot = self._slots.acquire()
        try:
            device_feeds = {name: slot.upload("in:" + name, arr) for name, arr in feeds.items()}
            # The inputs must be on the device before ORT's own stream reads them.
            slot.stream.synchronize()
            return self._run_bound(slot, device_feeds, session)
        finally:
            self._slots.release(slot)

    def run_device(self, feeds: Mapping[str, "object"], session=None) -> dict[str, np.ndarray]:
        """Feeds already on the device (gpu.memory.DeviceArray, e.g. from the preprocessing kernel).

        The caller must have synchronized the stream that wrote them. `session`: as in run().
        """
        from edgeinfer.runtime.gpu.memory import use_device

        use_device(self.device)
        slot = self._slots.acquire()
        try:
            return self._run_bound(slot, feeds, session)
        finally:
            self._slots.release(slot)

    def _run_bound(self, slot: Slot, device_feeds: Mapping[str, "object"], session=None) -> dict[str, np.ndarray]:
        """Bind `device_feeds` (gpu.memory.DeviceArray by input name) and our output buffers; run."""
        session = session if session is not None else self.session
        binding = session.io_binding()
        batch = None
        for name, a in device_feeds.items():
            binding.bind_input(name, "cuda", self.device, a.dtype.type, list(a.shape), a.ptr)
            if self.inputs[name].dynamic_batch:
                batch = a.shape[0]
        ours: list[tuple[str, object, object, np.dtype, tuple]] = []
        for spec in self.outputs:
            shape = tuple(batch if (i == 0 and d == -1 and batch is not None) else d for i, d in enumerate(spec.shape))
            if any(d < 0 for d in shape):
                binding.bind_output(spec.name, "cuda", self.device)  # ORT sizes and allocates it
                continue
            nbytes = int(np.prod(shape, dtype=np.int64)) * spec.dtype.itemsize
            dev, pin = slot.device_and_pinned("out:" + spec.name, nbytes)
            binding.bind_output(spec.name, "cuda", self.device, spec.dtype.type, list(shape), dev.ptr)
            ours.append((spec.name, dev, pin, spec.dtype, shape))
        session.run_with_iobinding(binding)
        results: dict[str, tuple] = {}
        for name, dev, pin, dtype, shape in ours:
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            dev.copy_to_host(pin, nbytes, slot.stream)
            results[name] = (pin, dtype, shape)
        if ours:
            slot.stream.synchronize()
        out: dict[str, np.ndarray] = {}
        ort_outputs = None
        for i, spec in enumerate(self.outputs):
            if spec.name in results:
                pin, dtype, shape = results[spec.name]
                out[spec.name] = pin.view(dtype, shape).copy()  # the pinned buffer is reused next call
            else:
                if ort_outputs is None:
                    ort_outputs = binding.get_outputs()
                out[spec.name] = ort_outputs[i].numpy()
        return out

    def close(self) -> None:
        self._slots.close()


# What io_binding=None means on a CUDA session. Off until host-fed binding beats
# ORT's own copies (see the module docstring for the measurement).
AUTO_IO_BINDING = False


_SOURCE_LOCATION = re.compile(r"\S*onnxruntime_src\S*:\d+\s+(?:[^\n]*?\)\s+)?")


def ort_message(exc: BaseException) -> str:
    """ONNX Runtime's message without its source paths and C++ signatures (clients see it)."""
    text = str(exc).replace("[ONNXRuntimeError] : ", "")
    return _SOURCE_LOCATION.sub("", text).strip()


class OnnxRuntimeRunner(DescribedRunner):
    """An ONNX Runtime session as a Runner.

    Args:
        session: an onnxruntime.InferenceSession.
        precision: what the session's model is ("fp32", "fp16", "int8").
        max_concurrency: concurrent infer() calls (device slots on CUDA).
        io_binding: on CUDA, bind inputs/outputs to edgeinfer's device buffers.
            None (default): `AUTO_IO_BINDING` (off: see the module docstring);
            False: plain session.run; True: required (raises if impossible).
    """

    def __init__(self, session, precision: str = "fp32", max_concurrency: int = 2,
                 io_binding: Optional[bool] = None):
        super().__init__()
        self.session = session
        self._inputs = [_spec(i) for i in session.get_inputs()]
        self._outputs = [_spec(o) for o in session.get_outputs()]
        self._output_names = [o.name for o in self._outputs]
        provider = session.get_providers()[0]
        cuda_opts = session.get_provider_options().get("CUDAExecutionProvider", {})
        device = f"cuda:{int(cuda_opts.get('device_id', 0))}" if provider == "CUDAExecutionProvider" else "cpu"
        batch_dims = {s.shape[0] for s in self._inputs if s.shape}
        fixed = next(iter(batch_dims)) if len(batch_dims) == 1 and -1 not in batch_dims else None
        self._io: Optional[CudaIoBinding] = None
        details = {"provider": provider}
        wanted = AUTO_IO_BINDING if io_binding is None else io_binding
        if provider == "CUDAExecutionProvider" and not wanted:
            details["io_binding"] = "off"
        if provider == "CUDAExecutionProvider" and wanted:
            try:
                self._io = CudaIoBinding(session, self._inputs, self._outputs, max_concurrency)
                details["io_binding"] = "on"
            except Exception as exc:  # noqa: BLE001 - GpuUnavailable, CudaError: fall back to session.run
                if io_binding:
                    raise
                details["io_binding"] = f"off: {exc}"
                log.warning("onnxruntime CUDA session without IO binding: %s", exc)
        self._info = RunnerInfo(backend="onnxruntime", precision=precision, device=device,
                                max_batch=fixed, max_concurrency=max_concurrency, details=details)
        # A call whose inputs pass this many bytes shrinks the CPU arena afterwards (0 = never):
        # [limits] arena_shrink_bytes, set by the model (model/served.py).
        self.shrink_arena_bytes = 16 * 1024 * 1024
        self._shrink = None
        # Non-batch input shapes of the first call (the warm-up's): a call with other ones (a client's
        # own tensor shapes) may grow the arena for activations no usual request needs.
        self._usual_shapes: Optional[dict] = None
        # batch size -> a session of the same model that only ever runs that size (pin_batch_sizes).
        self._pinned: dict[int, object] = {}
        self._batch_input = next((s.name for s in self._inputs if s.dynamic_batch), None)
        # Bound calls handed out: closed on deactivate, so that none keeps the session alive.
        self._bound_calls: "weakref.WeakSet[CpuBoundCall]" = weakref.WeakSet()

    def pin_batch_sizes(self, sessions: Mapping[int, object]) -> None:
        """Run these batch sizes on their own sessions; every other size stays on the main one.

        Each session then sees one input shape only, which the CUDA EP needs
        to keep its convolution plans (see OnnxRuntimeConfig.session_per_batch_size).
        """
        self._pinned = dict(sessions)
        if self._pinned:
            self._info.details["sessions_per_batch_size"] = ",".join(map(str, sorted(self._pinned)))

    def session_for(self, feeds: Mapping[str, np.ndarray]):
        """The session that runs a call with these feeds (by the batch size of the batched input)."""
        if self._pinned and self._batch_input is not None:
            arr = feeds.get(self._batch_input)
            if arr is not None and arr.ndim > 0:
                return self._pinned.get(int(arr.shape[0]), self.session)
        return self.session

    @property
    def io_binding(self) -> Optional[CudaIoBinding]:
        """The CUDA IO-binding path, or None on CPU / when off."""
        return self._io

    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.session_for(feeds)
        try:
            if self._io is not None:
                return self._io.run(feeds, session)
            run_options = None
            if self.shrink_arena_bytes and self._unusual(feeds):
                run_options = self._shrink_options()
            results = session.run(self._output_names, dict(feeds), run_options)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise InferenceError(f"onnxruntime failed: {ort_message(exc)}") from exc
        return dict(zip(self._output_names, results))

    def _unusual(self, feeds: Mapping[str, np.ndarray]) -> bool:
        """Whether this call's arena growth should be given back: inputs over shrink_arena_bytes, or
        non-batch shapes other than the first call's."""
        shapes = {name: a.shape[1:] for name, a in feeds.items()}
        if self._usual_shapes is None:
            self._usual_shapes = shapes
        elif shapes != self._usual_shapes:
            return True
        return sum(a.nbytes for a in feeds.values()) > self.shrink_arena_bytes

    def _shrink_options(self):
        """RunOptions that hand the CPU arena's unused chunks back after the run: the memory a large
        or oddly shaped request grew is otherwise kept for the life of the process. Only for those
        (_unusual), since the next ones would have to grow it again."""
        if self._shrink is None:
            import onnxruntime as ort

            opts = ort.RunOptions()
            opts.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
            self._shrink = opts
        return self._shrink

    def bound_call(self) -> Optional[BoundCall]:
        """On the CPU EP, a CpuBoundCall on the session that runs batch 1. None on CUDA: there the
        inline path is rare, and a binding would need the device copies CudaIoBinding makes."""
        if self.session is None or self._info.details.get("provider") != "CPUExecutionProvider":
            return None
        call = CpuBoundCall.for_session(self._pinned.get(1, self.session), self._inputs, self._outputs)
        if call is not None:
            self._bound_calls.add(call)
        return call

    def deactivate_impl(self) -> None:
        for call in list(self._bound_calls):
            call.close()
        if self._io is not None:
            self._io.close()
            self._io = None
        self.session = None
        self._pinned = {}
