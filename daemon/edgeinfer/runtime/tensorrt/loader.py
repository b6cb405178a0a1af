"""Engine from ONNX (through the engine cache), runner from engine.

    RunnerFromOnnx(request)()        -> activated TensorRTRunner      (edgeinfer serve)
    EngineBytesFromOnnx(request)()   -> BuildResult, no GPU execution  (edgeinfer build)
    plan_build(request)              -> BuildPlan: settings and cache key, nothing built

This module imports without TensorRT; TensorRT (or TensorRT-RTX) is imported when a loader
is called, and its absence is a BackendUnavailable with the import errors in the message.

Status: the build half ran for real with tensorrt_rtx 1.7.1 on an H200 (engine built,
cached, cache hit on the second call, deserialize refused on Hopper and reported as
BackendUnavailable); the execute half (runner.py) has not run anywhere.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from edgeinfer.errors import BackendLoadError, BackendUnavailable
from edgeinfer.runtime import LoadRequest
from edgeinfer.runtime.tensorrt import compat, onnx_info
from edgeinfer.runtime.tensorrt.builder import BuildSettings, build_engine, choose_typing, timing_cache_name
from edgeinfer.cache.engines import DeserializeError, EngineBlob, EngineCache, EngineUnusable, load_engine, make_key
from edgeinfer.runtime.tensorrt.profiles import ProfileDefaults, ProfileError, derive_profiles

log = logging.getLogger(__name__)

KEY_SCHEMA = 1


@dataclass
class BuildPlan:
    """Everything decided before TensorRT builds anything."""

    api: compat.TrtApi
    device_index: int
    gpu_name: str
    compute_capability: str
    settings: BuildSettings
    key_fields: dict
    key: str
    info: dict
    timing_cache: str               # file stem of the platform's timing cache
    notes: list[str] = field(default_factory=list)  # defaults chosen, for the log


def _platform():
    from edgeinfer import platform as plat

    return plat.detect()


def _reporter(request: LoadRequest) -> Callable[[str], None]:
    name = getattr(request.model, "name", "?")

    def report(msg: str) -> None:
        log.info("model %s: %s", name, msg)
        try:
            request.progress(msg)
        except Exception:  # noqa: BLE001 - a broken progress callback must not stop a build
            log.debug("progress callback failed", exc_info=True)

    return report


def plan_build(request: LoadRequest, api: Optional[compat.TrtApi] = None, platform_info=None) -> BuildPlan:
    """Decide settings and the cache key for `request` (imports TensorRT unless `api` is given).

    Raises:
        BackendUnavailable: no TensorRT, no cuda-python or no GPU.
        BackendLoadError: the ONNX cannot be read or the profiles do not fit it.
    """
    api = api or compat.import_tensorrt()
    info = platform_info if platform_info is not None else _platform()
    if not info.gpus:
        raise BackendUnavailable(f"{api.label} is installed but no CUDA GPU is visible "
                                 f"(cuda-python missing, no driver, or CUDA_VISIBLE_DEVICES empty)")
    device = request.device
    if device >= len(info.gpus):
        raise BackendLoadError(f"model {request.model.name}: device = {device}, but {len(info.gpus)} GPU(s) "
                               f"are visible (indexes count within CUDA_VISIBLE_DEVICES)")
    gpu = info.gpus[device]
    model = request.model
    trt_cfg = model.tensorrt
    try:
        inputs, onnx_hash = onnx_info.describe(request.onnx_path)
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError, OSError, ...
        raise BackendLoadError(f"cannot read {request.onnx_path}: {exc}") from exc
    try:
        profiles, notes = derive_profiles(inputs, trt_cfg.profiles, ProfileDefaults.from_model(model))
    except ProfileError as exc:
        raise BackendLoadError(f"model {model.name}: {exc}") from exc
    settings = BuildSettings(
        precision=request.precision,
        profiles=tuple(profiles),
        # One profile set per execution context (see runner.py); static models need none.
        profile_copies=trt_cfg.instances if profiles else 1,
        workspace_mb=trt_cfg.workspace_mb,
        optimization_level=trt_cfg.optimization_level,
        dla_core=trt_cfg.dla_core,
        hardware_compatibility=trt_cfg.hardware_compatibility,
        rtx_compute_capability=trt_cfg.rtx_compute_capability if api.is_rtx else None,
        typing=choose_typing(api),
        calibration_hash=getattr(request, "calibration_hash", None),
    )
    key_fields = {
        "schema": KEY_SCHEMA,
        "onnx_sha256": onnx_hash,
        "trt_module": api.name,
        "trt_version": api.version,
        "gpu_name": gpu.name,
        "compute_capability": gpu.compute_capability,
        "cuda_driver": info.cuda_driver,
        "cuda_runtime": info.cuda_runtime,
        "l4t_release": info.l4t_release,
        "build": settings.key_fields(),
    }
    manifest_info = {"model": model.name, "model_version": getattr(model, "version", None),
                     "onnx_path": str(request.onnx_path), "notes": notes}
    return BuildPlan(api, gpu.index, gpu.name, gpu.compute_capability, settings, key_fields,
                     make_key(key_fields), manifest_info,
                     timing_cache_name(api, gpu.name, gpu.compute_capability), notes)


def _build_fn(plan: BuildPlan, request: LoadRequest, cache: EngineCache, report: Callable[[str], None]):
    def build() -> bytes:
        timing = cache.timing_cache_path(plan.timing_cache) if plan.api.has_timing_cache else None
        return build_engine(plan.api, Path(request.onnx_path), plan.settings, report, timing,
                            cancel=getattr(request, "cancel", None))
    return build


def _deserializer(api: compat.TrtApi, keep: list):
    """deserialize_fn for load_engine: bytes -> ICudaEngine, or DeserializeError with TensorRT's text."""
    def deserialize(data: bytes):
        logger = compat.get_logger(api)
        with logger.capture() as cap:
            runtime = api.module.Runtime(logger)
            try:
                engine = runtime.deserialize_cuda_engine(data)
            except Exception as exc:  # noqa: BLE001 - some versions raise instead of returning None
                raise DeserializeError(cap.text() or str(exc)) from exc
        if engine is None:
            raise DeserializeError(cap.text() or "deserialize_cuda_engine returned None")
        keep.append(runtime)  # the runtime must outlive engines deserialized from it
        return engine
    return deserialize


def _unusable(plan: BuildPlan, exc: EngineUnusable) -> BackendUnavailable:
    return BackendUnavailable(f"{plan.api.label} cannot run the engine on {plan.gpu_name} "
                              f"(compute capability {plan.compute_capability}): {exc}")


@dataclass
class BuildResult:
    """What EngineBytesFromOnnx produced (for `edgeinfer build`)."""

    plan: BuildPlan
    blob: EngineBlob

    def summary(self) -> dict:
        return {
            "model": self.plan.info.get("model"),
            "key": self.blob.key,
            "tensorrt": self.plan.api.label,
            "gpu": f"{self.plan.gpu_name} (sm {self.plan.compute_capability})",
            "from_cache": self.blob.from_cache,
            "path": str(self.blob.path) if self.blob.path else None,
            "size": len(self.blob.data),
            "build_seconds": self.blob.build_seconds,
            "rebuild_reason": self.blob.rebuild_reason,
            "notes": self.plan.notes,
        }


class EngineBytesFromOnnx:
    """Lazy loader: build (or find) the engine in the cache without deserializing it.

    For `edgeinfer build`, including ahead-of-time builds for another target (TensorRT-RTX
    `rtx_compute_capability = "sm86"` on a build host whose GPU cannot run the engine).
    """

    def __init__(self, request: LoadRequest, force: bool = False, api: Optional[compat.TrtApi] = None):
        self.request, self.force, self.api = request, force, api

    def __call__(self) -> BuildResult:
        report = _reporter(self.request)
        plan = plan_build(self.request, self.api)
        for note in plan.notes:
            report(note)
        cache = EngineCache(self.request.cache_dir, report)
        if self.force:
            cache.invalidate(plan.key, "rebuild requested (--force)")
        blob = cache.get_or_build(plan.key_fields, _build_fn(plan, self.request, cache, report), plan.info)
        return BuildResult(plan, blob)


class RunnerFromOnnx:
    """Lazy loader: `RunnerFromOnnx(request)()` returns an active TensorRTRunner.

    Raises (when called):
        BackendUnavailable: TensorRT / cuda-python / GPU missing, or the runtime refuses the
            engine on this GPU (TensorRT-RTX on Hopper); the message has TensorRT's reason.
        BackendLoadError: TensorRT is here but cannot parse or build this model, or the
            engine cannot be activated (device memory).
    """

    def __init__(self, request: LoadRequest, api: Optional[compat.TrtApi] = None):
        self.request = request
        self.api = api

    def __call__(self):
        report = _reporter(self.request)
        api = self.api or compat.import_tensorrt()
        try:
            from edgeinfer.runtime.gpu import memory

            memory.cudart()
        except memory.GpuUnavailable as exc:
            raise BackendUnavailable(f"{api.label} is installed but {exc}") from exc
        plan = plan_build(self.request, api)
        for note in plan.notes:
            report(note)
        cache = EngineCache(self.request.cache_dir, report)
        keep: list = []
        try:
            engine, blob = load_engine(cache, plan.key_fields, _build_fn(plan, self.request, cache, report),
                                       _deserializer(plan.api, keep), plan.info)
        except EngineUnusable as exc:
            raise _unusable(plan, exc) from exc
        if blob.rebuild_reason:
            log.warning("model %s: engine rebuilt because %s", plan.info["model"], blob.rebuild_reason)
        from edgeinfer.runtime.tensorrt.runner import TensorRTRunner

        model = self.request.model
        runner = TensorRTRunner(
            plan.api, engine, precision=self.request.precision, instances=model.tensorrt.instances,
            profiles_per_instance=len(plan.settings.profiles), device_index=plan.device_index,
            warmup_runs=getattr(model, "warmup_runs", 1), keepalive=keep,
            details={"engine_key": blob.key, "engine_from_cache": blob.from_cache,
                     "engine_path": str(blob.path) if blob.path else None})
        report("activating engine (contexts, buffers, warm-up)")
        runner.activate()
        return runner
