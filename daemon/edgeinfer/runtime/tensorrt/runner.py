"""Runs a deserialized TensorRT engine: one execution context and one CUDA stream per instance.

THIS EXECUTE PATH HAS NOT RUN. No machine we work on has a TensorRT that can execute an
engine (docs/hardware.md: TensorRT-RTX refuses Hopper at deserialize; the full TensorRT
cannot be installed). It is written from NVIDIA's Python API documentation; each call
notes what the 10.x and 11.x docs say about it. Its buffers and streams are the GPU data
path's own (runtime/gpu/memory.py), which has run on the lent GPUs.

Concurrency: `instances` contexts, each with its own stream, device buffers and pinned host
buffers sized for its profiles' max shapes. infer() borrows a free instance from a queue.
The IExecutionContext reference says that with dynamic shapes "each execution context in
concurrent use must use a separate optimization profile", so the builder adds the profile
set once per instance and instance k uses profiles [k*P, (k+1)*P).
"""
from __future__ import annotations

import logging
import queue
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np

from edgeinfer.errors import BackendLoadError, InferenceError, InvalidInput
from edgeinfer.runtime.base import DescribedRunner, RunnerInfo, TensorSpec
from edgeinfer.runtime.gpu import memory as gpu
from edgeinfer.runtime.tensorrt import compat
from edgeinfer.runtime.tensorrt.profiles import ShapeRange, select_profile

log = logging.getLogger(__name__)


@dataclass
class _Buffer:
    dtype: np.dtype
    nbytes: int
    device: gpu.DeviceBuffer
    host: gpu.PinnedBuffer

    def free(self) -> None:
        self.device.close()
        self.host.close()


@dataclass
class _Instance:
    index: int
    context: object
    stream: gpu.Stream
    profile_ids: list[int]                       # engine profile indices this instance owns
    ranges: list[dict[str, ShapeRange]]          # per owned profile: dynamic input -> range
    buffers: dict[str, _Buffer] = field(default_factory=dict)
    current_profile: Optional[int] = None


def io_tensors(api: compat.TrtApi, engine) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of `engine`, in engine order; -1 marks a dynamic dimension."""
    trt = api.module
    inputs, outputs = [], []
    # 10.x and 11.x: name-based I/O (num_io_tensors / get_tensor_name); the binding-index
    # API (num_bindings, get_binding_*) was removed in 10.0.
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        spec = TensorSpec(name, compat.nptype(api, engine.get_tensor_dtype(name)),
                          tuple(int(d) for d in engine.get_tensor_shape(name)))
        # get_tensor_mode -> TensorIOMode.INPUT / OUTPUT (same in 10.x and 11.x).
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(spec)
    return inputs, outputs


def profile_ranges(engine, inputs: Sequence[TensorSpec], profile: int) -> dict[str, ShapeRange]:
    # get_tensor_profile_shape(name, profile) -> [min, opt, max] (10.x and 11.x; replaced
    # get_profile_shape(profile, binding) of 8.x).
    out = {}
    for spec in inputs:
        if any(d < 0 for d in spec.shape):
            lo, opt, hi = engine.get_tensor_profile_shape(spec.name, profile)
            out[spec.name] = ShapeRange(tuple(lo), tuple(opt), tuple(hi))
    return out


def _nbytes(shape: Sequence[int], dtype: np.dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize if len(shape) else dtype.itemsize


class TensorRTRunner(DescribedRunner):
    """Runner over one ICudaEngine. Construct with a deserialized engine; activate() allocates.

    Args:
        api: the TensorRT flavour that deserialized `engine`.
        engine: ICudaEngine.
        precision: reported in RunnerInfo.
        instances: execution contexts (= max concurrency).
        profiles_per_instance: P, the size of one profile set (0 for a static engine).
        device_index: CUDA device of the engine.
        warmup_runs: runs per instance at the opt shape during activate().
        details: extra RunnerInfo.details (cache key, module, version).
        keepalive: objects to keep referenced as long as the runner (the IRuntime).
    """

    def __init__(self, api: compat.TrtApi, engine, *, precision: str, instances: int,
                 profiles_per_instance: int, device_index: int = 0, warmup_runs: int = 1,
                 details: Optional[dict] = None, keepalive: Sequence = ()) -> None:
        super().__init__()
        self.api = api
        self.engine = engine
        self._keepalive = list(keepalive)  # the IRuntime must outlive the engine
        self.device_index = device_index
        self.warmup_runs = warmup_runs
        self._inputs, self._outputs = io_tensors(api, engine)
        n_profiles = int(engine.num_optimization_profiles)
        dynamic = any(any(d < 0 for d in s.shape) for s in self._inputs)
        if dynamic:
            per = max(1, profiles_per_instance)
            if n_profiles < per * instances:
                # An engine built for fewer contexts (e.g. by another tool): run what it allows.
                log.warning("engine has %d profile(s), %d instance(s) x %d needed; using %d instance(s)",
                            n_profiles, instances, per, max(1, n_profiles // per))
                instances = max(1, n_profiles // per)
        else:
            per = 1  # a static engine has one implicit profile, shareable by every context
        self.instances = instances
        self.profiles_per_instance = per
        self._profile_ids = [[(k * per + p) if dynamic else 0 for p in range(per)] for k in range(instances)]
        ranges0 = [profile_ranges(engine, self._inputs, pid) for pid in self._profile_ids[0]] if dynamic else [{}]
        max_batch = None
        batch_inputs = [s for s in self._inputs if s.dynamic_batch]
        if batch_inputs:
            max_batch = max(min(r[s.name].max[0] for s in batch_inputs) for r in ranges0)
        elif self._inputs and self._inputs[0].shape:
            max_batch = self._inputs[0].shape[0]
        info_details = {"module": api.name, "version": api.version, "profiles_per_instance": per}
        info_details.update(details or {})
        self._info = RunnerInfo(backend="tensorrt", precision=precision, device=f"cuda:{device_index}",
                                max_batch=max_batch, max_concurrency=instances, details=info_details)
        self._pool: "queue.Queue[_Instance]" = queue.Queue()
        self._all: list[_Instance] = []

    # -- lifecycle --------------------------------------------------------
    def activate_impl(self) -> None:
        gpu.use_device(self.device_index)
        try:
            for k in range(self.instances):
                self._pool.put(self._create_instance(k))
            for inst in self._all:
                self._warm_up(inst)
        except (gpu.CudaError, InferenceError) as exc:
            self.deactivate_impl()
            raise BackendLoadError(f"TensorRT engine could not be activated: {exc}") from exc
        except BaseException:
            self.deactivate_impl()
            raise

    def _create_instance(self, k: int) -> _Instance:
        # create_execution_context() allocates the context's activation memory
        # (device_memory_size_v2 bytes; 11.x removed device_memory_size, 10.x has both).
        context = self.engine.create_execution_context()
        if context is None:
            raise BackendLoadError(f"TensorRT could not create execution context {k} (device memory?)")
        stream = gpu.Stream(self.device_index)
        ids = self._profile_ids[k]
        dynamic = any(any(d < 0 for d in s.shape) for s in self._inputs)
        ranges = [profile_ranges(self.engine, self._inputs, pid) for pid in ids] if dynamic else [{}]
        inst = _Instance(k, context, stream, ids, ranges)
        self._all.append(inst)  # from here on deactivate_impl() frees what was allocated
        # Size every buffer for the largest shape any owned profile allows: set each profile's
        # max input shapes and read the resulting output shapes from the context.
        sizes: dict[str, int] = {}
        for local, pid in enumerate(ids):
            self._select_profile(inst, pid)
            for spec in self._inputs:
                shape = ranges[local][spec.name].max if spec.name in ranges[local] else spec.shape
                # set_input_shape(name, shape) -> bool (10.x and 11.x; replaced set_binding_shape).
                if not context.set_input_shape(spec.name, tuple(shape)):
                    raise BackendLoadError(f"TensorRT refused input shape {list(shape)} for {spec.name!r}")
                sizes[spec.name] = max(sizes.get(spec.name, 0), _nbytes(shape, spec.dtype))
            for spec in self._outputs:
                # get_tensor_shape on the context gives the output shape for the input shapes set.
                shape = tuple(context.get_tensor_shape(spec.name))
                if any(d < 0 for d in shape):
                    raise BackendLoadError(f"output {spec.name!r} has a data-dependent shape {list(shape)}; "
                                           f"this runner needs shapes known from the inputs")
                sizes[spec.name] = max(sizes.get(spec.name, 0), _nbytes(shape, spec.dtype))
        for spec in self._inputs + self._outputs:
            n = sizes[spec.name]
            device = gpu.DeviceBuffer(n, self.device_index)
            try:
                host = gpu.PinnedBuffer(n, self.device_index)
            except BaseException:
                device.close()
                raise
            inst.buffers[spec.name] = _Buffer(spec.dtype, n, device, host)
        return inst

    def _select_profile(self, inst: _Instance, profile_id: int) -> None:
        if inst.current_profile == profile_id:
            return
        # set_optimization_profile_async(index, stream) -> bool (10.x and 11.x); the synchronous
        # active_optimization_profile setter is deprecated. Input shapes must be set again after.
        if not inst.context.set_optimization_profile_async(profile_id, inst.stream.ptr):
            raise InferenceError(f"TensorRT could not switch context {inst.index} to profile {profile_id}")
        inst.current_profile = profile_id

    def _warm_up(self, inst: _Instance) -> None:
        # First runs load kernels (and on TensorRT-RTX compile the just-in-time part for
        # these shapes); do it before the model is reported ready.
        feeds = {}
        for spec in self._inputs:
            rng = inst.ranges[0].get(spec.name)
            shape = rng.opt if rng else spec.shape
            feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
        for _ in range(self.warmup_runs):
            self._run(inst, feeds)

    def deactivate_impl(self) -> None:
        for inst in self._all:
            try:
                inst.stream.synchronize()
            except gpu.CudaError as exc:
                log.warning("stream %d: %s", inst.index, exc)
            for buf in inst.buffers.values():
                buf.free()
            inst.stream.close()
            inst.context = None  # the bindings free the context when the last reference goes
        self._all.clear()
        self._pool = queue.Queue()

    def close(self) -> None:
        """Deactivate and drop the engine."""
        self.deactivate()
        self.engine = None
        self._keepalive.clear()

    # -- inference --------------------------------------------------------
    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._on_an_instance(feeds, {})

    def run_device(self, device_feeds: Mapping[str, object]) -> dict[str, np.ndarray]:
        """Inputs already in device memory (gpu.memory.DeviceArray: `.ptr`, `.shape`, `.dtype`, e.g. the
        preprocessing kernel's output): the engine reads them where they are, no copy. The caller has
        synchronized the stream that wrote them."""
        return self._on_an_instance({}, device_feeds)

    def _on_an_instance(self, feeds: Mapping[str, np.ndarray], device_feeds: Mapping[str, object]
                        ) -> dict[str, np.ndarray]:
        inst = self._pool.get()
        try:
            return self._run(inst, feeds, device_feeds)
        finally:
            self._pool.put(inst)

    def _run(self, inst: _Instance, feeds: Mapping[str, np.ndarray],
             device_feeds: Optional[Mapping[str, object]] = None) -> dict[str, np.ndarray]:
        gpu.use_device(self.device_index)  # executor threads start on device 0
        ctx, stream = inst.context, inst.stream
        device_feeds = device_feeds or {}
        shapes = {n: tuple(a.shape) for n, a in feeds.items()}
        shapes.update({n: tuple(a.shape) for n, a in device_feeds.items()})
        local = select_profile(inst.ranges, shapes)
        if local is None:
            allowed = [{n: r.as_list() for n, r in p.items()} for p in inst.ranges]
            raise InvalidInput(f"input shapes {({n: list(s) for n, s in shapes.items()})} are outside "
                               f"every optimization profile of this engine (min/opt/max: {allowed})")
        try:
            self._select_profile(inst, inst.profile_ids[local])
            for spec in self._inputs:
                on_device = device_feeds.get(spec.name)
                if on_device is not None:
                    if np.dtype(on_device.dtype) != spec.dtype:
                        raise InvalidInput(f"input {spec.name!r} takes {spec.dtype.name}, the device tensor is "
                                           f"{np.dtype(on_device.dtype).name}")
                    if not ctx.set_input_shape(spec.name, tuple(on_device.shape)):
                        raise InvalidInput(f"TensorRT refused shape {list(on_device.shape)} for input {spec.name!r}")
                    ctx.set_tensor_address(spec.name, on_device.ptr)
                    continue
                arr = np.ascontiguousarray(feeds[spec.name])
                buf = inst.buffers[spec.name]
                if not ctx.set_input_shape(spec.name, arr.shape):
                    raise InvalidInput(f"TensorRT refused shape {list(arr.shape)} for input {spec.name!r}")
                buf.host.view(spec.dtype, arr.shape)[...] = arr
                buf.device.copy_from_host(buf.host, arr.nbytes, stream)
                # set_tensor_address(name, ptr): 10.x and 11.x (replaced the bindings array of
                # execute_async_v2). Set on every call: a profile switch may reset bindings.
                ctx.set_tensor_address(spec.name, buf.device.ptr)
            for spec in self._outputs:
                ctx.set_tensor_address(spec.name, inst.buffers[spec.name].device.ptr)
            logger = compat.get_logger(self.api)
            with logger.capture() as cap:
                # execute_async_v3(stream_handle) -> bool: enqueue on the stream (10.x and 11.x;
                # execute_v2/execute_async_v2 and their bindings were removed in 10.0).
                ok = ctx.execute_async_v3(stream.ptr)
            if not ok:
                raise InferenceError(f"TensorRT execution failed: {cap.text() or 'no reason given'}")
            out_shapes = {}
            for spec in self._outputs:
                shape = tuple(int(d) for d in ctx.get_tensor_shape(spec.name))
                buf = inst.buffers[spec.name]
                nbytes = _nbytes(shape, spec.dtype)
                buf.device.copy_to_host(buf.host, nbytes, stream)
                out_shapes[spec.name] = shape
            stream.synchronize()
            # Copy out of the pinned buffers: they are reused by the next call on this instance.
            return {name: inst.buffers[name].host.view(inst.buffers[name].dtype, shape).copy()
                    for name, shape in out_shapes.items()}
        except gpu.CudaError as exc:
            raise InferenceError(f"CUDA error during TensorRT inference: {exc}") from exc
