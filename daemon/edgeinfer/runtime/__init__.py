"""Backends, picked from a plain table and imported lazily.

Each backend is a folder with the same file names (loader.py, runner.py).
`loader.RunnerFromOnnx(request)` returns a lazy loader; calling it returns an
activated Runner or raises BackendUnavailable (the runtime is missing or cannot
run here) / BackendLoadError (it is here but cannot load this model). The model
loader then tries the next backend in the model's list and records why.
"""
from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from edgeinfer.errors import BackendUnavailable
from edgeinfer.runtime.base import Runner, RunnerInfo, TensorSpec

# name -> module holding RunnerFromOnnx. Order of "auto" lives in config.BACKEND_NAMES.
BACKENDS: dict[str, str] = {
    "tensorrt": "edgeinfer.runtime.tensorrt.loader",
    "onnxruntime": "edgeinfer.runtime.onnxruntime.loader",
}


@dataclass
class LoadRequest:
    """Everything a backend needs to turn one ONNX file into a runner."""

    model: "object"  # config.ModelConfig (kept loose to avoid an import cycle)
    onnx_path: Path
    precision: str = "fp32"
    cache_dir: Optional[Path] = None
    # Hash of the INT8 calibration data (part of the engine cache key).
    calibration_hash: Optional[str] = None
    # Called with short progress text ("parsing ONNX", "building 42%").
    progress: Callable[[str], None] = field(default=lambda _msg: None)
    # Set when the daemon stops: a TensorRT build in progress ends at its next step
    # (IProgressMonitor) instead of holding shutdown for minutes.
    cancel: Optional[threading.Event] = None

    @property
    def device(self) -> int:
        """The GPU index the model runs on ([models] device, else [server] device; 0 without a config)."""
        return int(getattr(self.model, "device", None) or 0)


def loader_for(backend: str):
    """Import a backend's loader module; ImportError becomes BackendUnavailable."""
    try:
        module_name = BACKENDS[backend]
    except KeyError:
        raise BackendUnavailable(f"unknown backend {backend!r}") from None
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailable(f"{backend} is not installed ({exc})") from exc


def load_runner(backend: str, request: LoadRequest) -> Runner:
    """Load and activate a runner for `request` on `backend`."""
    module = loader_for(backend)
    runner = module.RunnerFromOnnx(request)()
    return runner


__all__ = ["BACKENDS", "LoadRequest", "Runner", "RunnerInfo", "TensorSpec", "load_runner", "loader_for"]
