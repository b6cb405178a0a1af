"""Turn one configured model into a runner: the precision x backend fallback chain.

For each precision the model lists (e.g. int8, fp16, fp32), in order:
  1. make the ONNX variant (precision transforms; fp32 is the file itself),
  2. try each backend the model lists (e.g. tensorrt, onnxruntime), in order,
  3. for a reduced precision, run the accuracy gate on the loaded runner
     against the FP32 model; below the threshold the precision is refused.
The first runner that loads (and passes the gate) serves. Every step is
recorded as an Attempt with its reason, so GetModel, `edgeinfer models`, the
logs and the metrics can say why a model runs where it runs.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from edgeinfer.runtime import LoadRequest, Runner, load_runner
from edgeinfer.config import ModelConfig
from edgeinfer.errors import BackendLoadError, BackendUnavailable, EdgeInferError

log = logging.getLogger(__name__)


@dataclass
class Attempt:
    backend: str
    precision: str
    outcome: str  # "selected", "failed", "skipped"
    reason: str = ""


@dataclass
class LoadOutcome:
    runner: Optional[Runner]
    attempts: list[Attempt] = field(default_factory=list)
    # precision.AccuracyReport objects, one per gated precision.
    accuracy: list = field(default_factory=list)

    @property
    def failure_reason(self) -> str:
        failed = [a for a in self.attempts if a.outcome == "failed"]
        return "; ".join(f"{a.backend}/{a.precision}: {a.reason}" for a in failed) or "nothing to try"


class ModelLoader:
    """Callable: ModelLoader(cfg, cache_dir, progress)() -> LoadOutcome (never raises for load failures)."""

    def __init__(self, cfg: ModelConfig, cache_dir: Optional[Path],
                 progress: Callable[[str], None] = lambda _m: None, cancel: Optional[threading.Event] = None):
        """cancel: set to stop a TensorRT build in progress (shutdown)."""
        self.cfg = cfg
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.progress = progress
        self.cancel = cancel

    def __call__(self) -> LoadOutcome:
        outcome = LoadOutcome(runner=None)
        for precision in self.cfg.precision:
            try:
                prepared = self._prepare(precision)
            except EdgeInferError as exc:
                self._record(outcome, "-", precision, "failed", f"precision transform failed: {exc}")
                continue
            for backend in self.cfg.backend_order:
                runner = self._try_backend(outcome, backend, precision, prepared)
                if runner is None:
                    continue
                if precision != "fp32":
                    report = self._gate(precision, runner)
                    outcome.accuracy.append(report)
                    if not report.passed:
                        runner.deactivate()
                        self._record(outcome, backend, precision, "failed",
                                     f"accuracy gate refused {precision}: {report.reason}")
                        # The transform itself is what loses accuracy: do not
                        # try the same precision on another backend.
                        break
                self._record(outcome, backend, precision, "selected", f"serving on {runner.info.device}")
                outcome.runner = runner
                return outcome
        return outcome

    # -- steps ----------------------------------------------------------------
    def _prepare(self, precision: str):
        if precision == "fp32":
            return _Prepared(Path(self.cfg.onnx), "fp32", None)
        from edgeinfer.model import precision as precision_mod  # heavy (onnx, quantization): import on demand

        if self.cache_dir is None:
            raise BackendLoadError("reduced precisions need a cache directory for the transformed model")
        self.progress(f"preparing {precision} model")
        return precision_mod.prepare_precision(self.cfg, precision, self.cache_dir, progress=self.progress)

    def _try_backend(self, outcome: LoadOutcome, backend: str, precision: str, prepared) -> Optional[Runner]:
        self.progress(f"loading on {backend} ({precision})")
        request = LoadRequest(model=self.cfg, onnx_path=Path(prepared.onnx_path), precision=precision,
                              cache_dir=self.cache_dir, progress=self.progress,
                              calibration_hash=getattr(prepared, "calibration_hash", None), cancel=self.cancel)
        try:
            runner = load_runner(backend, request)
        except BackendUnavailable as exc:
            self._record(outcome, backend, precision, "skipped", str(exc))
            return None
        except EdgeInferError as exc:
            self._record(outcome, backend, precision, "failed", str(exc))
            return None
        except Exception as exc:  # noqa: BLE001 - a backend bug must not take the daemon down
            log.exception("model %s: %s raised unexpectedly", self.cfg.name, backend)
            self._record(outcome, backend, precision, "failed", f"unexpected {type(exc).__name__}: {exc}")
            return None
        return runner

    def _gate(self, precision: str, runner: Runner):
        from edgeinfer.model import precision as precision_mod

        self.progress(f"accuracy gate for {precision}")
        reference = precision_mod.fp32_reference(self.cfg)
        return precision_mod.evaluate_accuracy(self.cfg, precision, runner.infer, reference,
                                               progress=self.progress)

    def _record(self, outcome: LoadOutcome, backend: str, precision: str, result: str, reason: str) -> None:
        outcome.attempts.append(Attempt(backend, precision, result, reason))
        level = logging.INFO if result == "selected" else logging.WARNING
        log.log(level, "model %s: %s/%s %s: %s", self.cfg.name, backend, precision, result, reason)


@dataclass
class _Prepared:
    onnx_path: Path
    precision: str
    calibration_hash: Optional[str]
