"""Engine from ONNX: parse, configure, build, serialize.

Runs with ``tensorrt`` 10.x, 11.x and ``tensorrt_rtx`` (same API shape; differences are
in compat.py). The TensorRT-RTX path of this module was run for real on an H200
(scripts/gpu_check_trt.py); the ``tensorrt`` 10.x/11.x paths are written from NVIDIA's
documentation and exercised here only with a test double.

Precision: the ONNX file already carries it (the precision transforms write an fp16 ONNX
or a Q/DQ-quantized one, and the accuracy gate judged exactly that file), so networks are
built *strongly typed* wherever the flag exists: 11.x requires it (BuilderFlag.FP16/INT8
were removed), and on 10.x it keeps TensorRT from choosing other precisions than the gated
ONNX has. Only a TensorRT without NetworkDefinitionCreationFlag.STRONGLY_TYPED (older than
the versions we support, kept as a fallback) gets the weak-typing FP16/INT8 builder flags.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from edgeinfer.errors import BackendLoadError, BackendUnavailable
from edgeinfer.runtime.tensorrt import compat
from edgeinfer.cache.engines import EngineCache
from edgeinfer.runtime.tensorrt.profiles import profiles_to_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildSettings:
    """Every setting that changes the engine; all of them go into the cache key."""

    precision: str
    profiles: tuple = ()            # tuple[Profile, ...]; empty for static models
    profile_copies: int = 1         # one profile set per execution context (see loader)
    workspace_mb: int = 1024
    optimization_level: int = 3
    dla_core: int = -1
    hardware_compatibility: str = "none"
    rtx_compute_capability: Optional[str] = None  # only meaningful for tensorrt_rtx
    typing: str = "strong"          # "strong" or "weak", decided by choose_typing()
    calibration_hash: Optional[str] = None

    def key_fields(self) -> dict:
        return {
            "precision": self.precision,
            "profiles": profiles_to_json(self.profiles),
            "profile_copies": self.profile_copies,
            "workspace_mb": self.workspace_mb,
            "optimization_level": self.optimization_level,
            "dla_core": self.dla_core,
            "hardware_compatibility": self.hardware_compatibility,
            "rtx_compute_capability": self.rtx_compute_capability,
            "typing": self.typing,
            "calibration_hash": self.calibration_hash,
        }


def choose_typing(api: compat.TrtApi) -> str:
    """"strong" when the network flag exists (10.x opt-in, 11.x always on), else "weak"."""
    return "strong" if api.strongly_typed_flag is not None else "weak"


def timing_cache_name(api: compat.TrtApi, gpu_name: str, compute_capability: str) -> str:
    """File stem of the timing cache for this platform (tactic timings are per GPU and version)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower() or "gpu"
    return f"{api.name}-{api.version}-{slug}-sm{compute_capability.replace('.', '')}"


# --------------------------------------------------------------------------
# Progress monitor
# --------------------------------------------------------------------------

def make_progress_monitor(api: compat.TrtApi, report: Callable[[str], None],
                          cancel: Optional[threading.Event] = None, min_interval_s: float = 2.0):
    """An IProgressMonitor that reports top-level phases and their percentage through `report`.

    TensorRT calls it from its own threads, so it locks; step reports are throttled to one
    per `min_interval_s`. Returning False from step_complete cancels the build (`cancel` set).
    """
    base = api.module.IProgressMonitor

    class _Monitor(base):
        def __init__(self) -> None:
            base.__init__(self)
            self._lock = threading.Lock()
            self._phases: dict[str, tuple[Optional[str], int]] = {}
            self._last = 0.0

        def phase_start(self, phase_name, parent_phase, num_steps):
            with self._lock:
                self._phases[phase_name] = (parent_phase or None, int(num_steps))
            if not parent_phase:
                report(f"{phase_name} ({num_steps} steps)")
            else:
                log.debug("build phase %s / %s: %d steps", parent_phase, phase_name, num_steps)

        def step_complete(self, phase_name, step):
            with self._lock:
                parent, steps = self._phases.get(phase_name, (None, 0))
                now = time.monotonic()
                due = parent is None and steps > 0 and now - self._last >= min_interval_s
                if due:
                    self._last = now
            if due:
                report(f"{phase_name} {min(100, 100 * (int(step) + 1) // steps)}%")
            return not (cancel is not None and cancel.is_set())

        def phase_finish(self, phase_name):
            with self._lock:
                parent, _ = self._phases.pop(phase_name, (None, 0))
            if parent is None:
                report(f"{phase_name} done")

    return _Monitor()


# --------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------

def _parser_errors(parser) -> list[str]:
    out = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        parts = [str(err.desc())]
        node_name = getattr(err, "node_name", None)
        op = getattr(err, "node_operator", None)
        where = []
        if callable(node_name) and node_name():
            where.append(f"node {node_name()!r}")
        elif err.node() >= 0:
            where.append(f"node #{err.node()}")
        if callable(op) and op():
            where.append(f"op {op()}")
        if where:
            parts.append("(" + ", ".join(where) + ")")
        out.append(" ".join(parts))
    return out


def _network_inputs(network) -> list[tuple[str, tuple[int, ...]]]:
    out = []
    for i in range(network.num_inputs):
        t = network.get_input(i)
        out.append((t.name, tuple(int(d) for d in t.shape)))
    return out


def _add_profiles(api: compat.TrtApi, builder, config, network, settings: BuildSettings) -> int:
    """Add settings.profiles, settings.profile_copies times; returns how many were added."""
    inputs = dict(_network_inputs(network))
    dynamic = {n for n, shape in inputs.items() if any(d < 0 for d in shape)}
    if not dynamic:
        return 0
    if not settings.profiles:
        raise BackendLoadError(f"inputs {sorted(dynamic)} have dynamic shapes but no optimization profile was given")
    for p in settings.profiles:
        missing = sorted(dynamic - set(p))
        unknown = sorted(set(p) - set(inputs))
        if missing or unknown:
            raise BackendLoadError(f"optimization profile does not match the network as TensorRT parsed it: "
                                   f"missing {missing}, unknown {unknown}; network inputs {inputs}")
    added = 0
    for _copy in range(settings.profile_copies):
        for p in settings.profiles:
            prof = builder.create_optimization_profile()
            for name, rng in sorted(p.items()):
                prof.set_shape(name, rng.min, rng.opt, rng.max)
            if config.add_optimization_profile(prof) < 0:
                raise BackendLoadError(f"TensorRT rejected optimization profile {profiles_to_json([p])}")
            added += 1
    return added


def _configure(api: compat.TrtApi, builder, config, settings: BuildSettings) -> None:
    trt = api.module
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    if hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = settings.optimization_level
    if settings.typing == "weak" and settings.precision in ("fp16", "int8"):
        # Fallback for a TensorRT without strong typing. INT8 from a Q/DQ ONNX needs no calibrator.
        config.set_flag(trt.BuilderFlag.FP16)
        if settings.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
    if settings.dla_core >= 0:
        cores = int(getattr(builder, "num_DLA_cores", 0) or 0)
        if cores <= settings.dla_core:
            raise BackendUnavailable(f"DLA core {settings.dla_core} requested but this device has {cores} DLA core(s)")
        if not hasattr(trt.BuilderFlag, "GPU_FALLBACK"):
            raise BackendUnavailable(f"{api.label} has no DLA support (BuilderFlag.GPU_FALLBACK missing)")
        if settings.precision == "fp32":
            log.warning("DLA runs fp16/int8 layers only: with an fp32 ONNX every layer falls back to the GPU")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)  # layers DLA cannot run go to the GPU
    compat.set_hardware_compatibility(api, config, settings.hardware_compatibility)
    if api.is_rtx and settings.rtx_compute_capability:
        compat.set_rtx_compute_capability(api, config, settings.rtx_compute_capability)


def _load_timing_cache(config, path: Optional[Path]):
    """Attach the platform's timing cache (empty if none yet). Returns the ITimingCache."""
    blob = b""
    if path is not None:
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("timing cache %s unreadable (%s); starting an empty one", path, exc)
    cache = config.create_timing_cache(blob)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        # Written by another device or TensorRT version: start over rather than mix timings.
        log.warning("timing cache %s does not match this platform; starting an empty one", path)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    else:
        log.info("timing cache %s: %d bytes loaded", path, len(blob))
    return cache


def _save_timing_cache(config, path: Optional[Path]) -> None:
    if path is None:
        return
    ours = config.get_timing_cache()
    if ours is None:
        return

    def merge(current: Optional[bytes]) -> bytes:
        # Another build (other model, other process) may have written it meanwhile: combine.
        if current:
            other = config.create_timing_cache(current)
            ours.combine(other, True)
        return bytes(memoryview(ours.serialize()))

    EngineCache.update_file(path, merge)


def build_engine(api: compat.TrtApi, onnx_path: Path, settings: BuildSettings,
                 progress: Callable[[str], None] = lambda _m: None,
                 timing_cache: Optional[Path] = None,
                 cancel: Optional[threading.Event] = None) -> bytes:
    """Parse `onnx_path` and build a serialized engine with `settings`.

    Raises:
        BackendLoadError: the parser rejects the model (the message lists parser errors with
            node names), a profile does not fit, or the build fails (out of memory,
            unsupported layer); the message carries TensorRT's own error text.
        BackendUnavailable: the settings need hardware this machine lacks (DLA).
    """
    trt = api.module
    logger = compat.get_logger(api)
    with logger.capture() as cap:
        builder = trt.Builder(logger)
        flags = api.strongly_typed_flag if settings.typing == "strong" else 0
        network = builder.create_network(flags or 0)
        parser = trt.OnnxParser(network, logger)
        progress(f"parsing {onnx_path.name} with {api.label}")
        # parse_from_file (not parse(bytes)) so external-data weights beside the file are found.
        if not parser.parse_from_file(str(onnx_path)):
            errors = _parser_errors(parser) or [cap.text() or "no reason given"]
            raise BackendLoadError(f"{api.label} cannot parse {onnx_path.name}: " + "; ".join(errors))
        config = builder.create_builder_config()
        _configure(api, builder, config, settings)
        n_profiles = _add_profiles(api, builder, config, network, settings)
        if timing_cache is not None and api.has_timing_cache:
            _load_timing_cache(config, timing_cache)
        monitor = None
        if api.has_progress_monitor:
            monitor = make_progress_monitor(api, progress, cancel)
            config.progress_monitor = monitor  # keep `monitor` referenced until the build ends
        progress(f"building engine ({settings.precision}, {n_profiles} profile(s), "
                 f"{settings.typing}ly typed); this can take minutes")
        start = time.monotonic()
        try:
            plan = builder.build_serialized_network(network, config)
        except Exception as exc:  # noqa: BLE001 - bindings raise for some invalid configs
            raise BackendLoadError(f"{api.label} build failed: {exc}") from exc
        if plan is None:
            reason = cap.text() or "no reason given"
            if cancel is not None and cancel.is_set():
                reason = "cancelled"
            hint = ""
            if re.search(r"out of memory|OOM|cudaErrorMemoryAllocation|insufficient memory", reason, re.I):
                hint = f" (workspace_mb={settings.workspace_mb}; lower it or free device memory)"
            raise BackendLoadError(f"{api.label} could not build the engine: {reason}{hint}")
        data = bytes(memoryview(plan))
        progress(f"engine built in {time.monotonic() - start:.1f} s ({len(data) / 1e6:.1f} MB)")
        if timing_cache is not None and api.has_timing_cache:
            _save_timing_cache(config, timing_cache)
        del monitor
    return data
