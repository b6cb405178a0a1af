"""Which TensorRT is here, and the few places where 10.x, 11.x and TensorRT-RTX differ.

Three Python modules share one API shape:

- ``tensorrt`` 10.x (Jetson JetPack 6: 10.3; datacenter 10.x),
- ``tensorrt`` 11.x (datacenter; strongly typed networks only),
- ``tensorrt_rtx`` 1.x (TensorRT for RTX: RTX GPUs of compute capability 7.5, 8.x, 12.x;
  compiles part of the engine just in time on the target).

Everything version-specific is decided here, by probing attributes rather than by
comparing version numbers where an attribute answers the question, so a point release
that adds or removes something is handled without a code change. Nothing in this module
imports TensorRT at import time.
"""
from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Optional, Sequence

from edgeinfer.errors import BackendLoadError, BackendUnavailable

log = logging.getLogger(__name__)

# Tried in this order: the full TensorRT first (datacenter, Jetson), then TensorRT-RTX.
MODULE_CANDIDATES: tuple[str, ...] = ("tensorrt", "tensorrt_rtx")

# Config value -> TensorRT-RTX ComputeCapability member name.
RTX_COMPUTE_CAPABILITIES = {
    "current": "CURRENT",
    "sm75": "SM75",
    "sm80": "SM80",
    "sm86": "SM86",
    "sm89": "SM89",
    "sm120": "SM120",
    "sm121": "SM121",
}

# Config value -> HardwareCompatibilityLevel member name (TensorRT >= 8.6).
HARDWARE_COMPATIBILITY = {
    "none": "NONE",
    "ampere+": "AMPERE_PLUS",
    "same-compute-capability": "SAME_COMPUTE_CAPABILITY",
}


@dataclass(frozen=True)
class TrtApi:
    """One imported TensorRT flavour and what it can do."""

    module: ModuleType
    name: str      # "tensorrt" or "tensorrt_rtx"
    version: str   # module.__version__, e.g. "10.3.0" or "1.7.1.116"

    @property
    def major(self) -> int:
        try:
            return int(self.version.split(".")[0])
        except ValueError:
            return 0

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt_rtx"

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"

    @property
    def has_weak_typing(self) -> bool:
        """Whether BuilderFlag.FP16/INT8 exist (10.x: yes; 11.x: removed, see the
        10.x->11.x migration guide, "Removed Python APIs": BuilderFlag.FP16 -> strong typing)."""
        flags = getattr(self.module, "BuilderFlag", None)
        return flags is not None and hasattr(flags, "FP16")

    @property
    def strongly_typed_flag(self) -> Optional[int]:
        """Bit for ``create_network`` that makes the network strongly typed, or None.

        10.x: NetworkDefinitionCreationFlag.STRONGLY_TYPED opts in. 11.x: every network is
        strongly typed; the flag is still accepted (and ignored), so setting it is safe on both.
        """
        flags = getattr(self.module, "NetworkDefinitionCreationFlag", None)
        member = getattr(flags, "STRONGLY_TYPED", None) if flags is not None else None
        return None if member is None else 1 << int(member)

    @property
    def has_progress_monitor(self) -> bool:
        # IProgressMonitor: TensorRT >= 10.0 and TensorRT-RTX.
        return hasattr(self.module, "IProgressMonitor")

    @property
    def has_timing_cache(self) -> bool:
        # TensorRT-RTX >= 1.2 documents timing-cache calls as no-ops; the full
        # TensorRT keeps using it to skip tactic timing on rebuilds.
        return not self.is_rtx and hasattr(self.module, "ITimingCache")


def import_tensorrt(candidates: Sequence[str] = MODULE_CANDIDATES,
                    importer: Callable[[str], ModuleType] = importlib.import_module) -> TrtApi:
    """Import the first usable TensorRT module.

    Raises:
        BackendUnavailable: none imports; the message lists each candidate's reason.
    """
    reasons = []
    for name in candidates:
        try:
            module = importer(name)
        except Exception as exc:  # noqa: BLE001 - PyPI stub packages raise arbitrary errors on import
            reasons.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        version = str(getattr(module, "__version__", "") or "")
        if not hasattr(module, "Builder") or not hasattr(module, "Runtime"):
            # e.g. the lean runtime (tensorrt_lean) or a stub: cannot build engines here.
            reasons.append(f"{name} {version}: has no Builder/Runtime (not a full TensorRT)")
            continue
        return TrtApi(module=module, name=name, version=version or "unknown")
    raise BackendUnavailable("TensorRT is not installed or not importable here (" + "; ".join(reasons) + ")")


# --------------------------------------------------------------------------
# Logger: one per module (TensorRT keeps the first logger it is given for the
# whole process), forwarding to Python logging and letting callers capture
# the error text of one operation for their exception message.
# --------------------------------------------------------------------------

_loggers: dict[str, object] = {}
_loggers_lock = threading.Lock()


class _Capture:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def text(self, limit: int = 3) -> str:
        # The last errors are the specific ones; earlier ones are often generic.
        return " | ".join(self.messages[-limit:])


def get_logger(api: TrtApi):
    """The process-wide TensorRT logger for `api` (an ``ILogger`` subclass)."""
    with _loggers_lock:
        existing = _loggers.get(api.name)
        if existing is not None:
            return existing
        trt = api.module
        severity = trt.ILogger.Severity

        class _Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self._lock = threading.Lock()
                self._captures: list[_Capture] = []

            def log(self, sev, msg):  # called by TensorRT, possibly from its own threads
                if sev in (severity.INTERNAL_ERROR, severity.ERROR):
                    log.error("%s: %s", api.name, msg)
                    with self._lock:
                        for cap in self._captures:
                            cap.messages.append(str(msg))
                elif sev == severity.WARNING:
                    log.warning("%s: %s", api.name, msg)
                elif sev == severity.INFO:
                    log.debug("%s: %s", api.name, msg)

            def capture(self):
                logger = self

                class _Ctx:
                    def __enter__(self_inner):
                        self_inner.cap = _Capture()
                        with logger._lock:
                            logger._captures.append(self_inner.cap)
                        return self_inner.cap

                    def __exit__(self_inner, *exc):
                        with logger._lock:
                            logger._captures.remove(self_inner.cap)

                return _Ctx()

        instance = _Logger()
        _loggers[api.name] = instance
        return instance


# --------------------------------------------------------------------------
# Builder-config setters that differ between flavours
# --------------------------------------------------------------------------

def set_hardware_compatibility(api: TrtApi, config, level: str) -> None:
    """Apply [tensorrt] hardware_compatibility ("none" is the default and sets nothing)."""
    if level == "none":
        return
    enum = getattr(api.module, "HardwareCompatibilityLevel", None)
    member = getattr(enum, HARDWARE_COMPATIBILITY[level], None) if enum is not None else None
    if member is None or not hasattr(config, "hardware_compatibility_level"):
        raise BackendLoadError(f"{api.label} has no hardware compatibility level {level!r}")
    config.hardware_compatibility_level = member


def set_rtx_compute_capability(api: TrtApi, config, target: str) -> None:
    """TensorRT-RTX only: choose the ahead-of-time target architecture.

    "current" = the GPU of this machine. On a GPU that TensorRT-RTX does not support
    (e.g. Hopper, 9.0) "current" yields an engine for no architecture, so name a target.
    """
    enum = getattr(api.module, "ComputeCapability", None)
    name = RTX_COMPUTE_CAPABILITIES.get(target.lower())
    member = getattr(enum, name, None) if (enum is not None and name) else None
    if member is None:
        known = sorted(k for k, v in RTX_COMPUTE_CAPABILITIES.items() if enum is not None and hasattr(enum, v))
        raise BackendLoadError(f"{api.label} does not know compute capability {target!r} "
                               f"(known: {', '.join(known) or 'none'})")
    # One target; set_compute_capability's index must be < num_compute_capabilities.
    config.num_compute_capabilities = 1
    config.set_compute_capability(member, 0)


def nptype(api: TrtApi, trt_dtype):
    """numpy dtype for a TensorRT DataType, or a BackendLoadError naming it."""
    import numpy as np

    try:
        return np.dtype(api.module.nptype(trt_dtype))
    except Exception as exc:  # noqa: BLE001 - bf16/fp8/int4 have no numpy type
        raise BackendLoadError(f"{api.label}: tensor type {trt_dtype} has no numpy equivalent") from exc
