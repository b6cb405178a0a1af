"""The accuracy gate: does a reduced-precision runner still give the FP32 model's answers?

Both models see the same validation images, preprocessed like served
requests; their outputs go through the model's own postprocessor, and the
answers (not only the tensors) are compared, per task:

| task                | gate metric      | threshold (config)   | also reported                         |
| ------------------- | ---------------- | -------------------- | ------------------------------------- |
| classification      | top1_agreement   | min_top1_agreement   | top5_overlap, top1_in_reference_top5, |
|                     |                  |                      | cosine, max_abs_diff                  |
| centerface, yolov8  | mean_iou         | min_mean_iou         | count_agreement, matched_iou, boxes   |
| raw                 | cosine_min       | min_cosine           | cosine_mean, max_abs_diff             |

Models are plain callables `feeds -> outputs`, so any runner's `.infer`
can be gated. A refusal is a result, not an exception: the report says why
with the numbers, and the loader moves on to the next precision.
"""
from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from edgeinfer.config import ACCURACY_GATES, ModelConfig
from edgeinfer.errors import EdgeInferError
from edgeinfer.model.families.labels import load_labels
from edgeinfer.model.families.postprocess import Options, postprocessor_for
from edgeinfer.model.precision.base import PrecisionError, fixed_batch, read_graph_io
from edgeinfer.model.precision.metrics import classification_figures, detection_figures, tensor_figures
from edgeinfer.model.precision.samples import load_samples, validation_source

log = logging.getLogger(__name__)

ModelFn = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]

GATES = ACCURACY_GATES  # task -> (gate metric, CalibrationConfig field holding its threshold)


@dataclass
class AccuracyReport:
    """Outcome of the accuracy gate for one precision."""

    precision: str
    metrics: dict[str, float] = field(default_factory=dict)
    gate_metric: str = ""
    threshold: float = 0.0
    passed: bool = False
    samples: int = 0
    reason: str = ""

    def summary(self) -> str:
        figures = ", ".join(f"{k}={v:.4f}" for k, v in self.metrics.items())
        verdict = "passed" if self.passed else "REFUSED"
        return f"{self.precision} {verdict}: {self.reason} [{figures}]"


# -- FP32 reference -----------------------------------------------------------

def session_callable(path: Path, graph_optimization: str = "all") -> ModelFn:
    """An ONNX Runtime CPU session on `path` as a `feeds -> outputs` callable (model output order).

    Args:
        path: ONNX file.
        graph_optimization: "disable", "basic", "extended" or "all". With
            "disable" or "basic" a QDQ model is executed as written (float math
            between Q/DQ pairs, the semantics TensorRT implements with int8
            kernels); from "extended" on ORT fuses Q/DQ into its own int8 CPU
            kernels.

    Raises:
        PrecisionError: ONNX Runtime cannot load the file.
    """
    import onnxruntime as ort

    from edgeinfer.runtime.onnxruntime.loader import session_options

    try:
        session = ort.InferenceSession(str(path), sess_options=session_options(graph_optimization),
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own types
        raise PrecisionError(f"onnxruntime cannot load {path}: {exc}") from exc
    names = [o.name for o in session.get_outputs()]

    def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, dict(feeds))))

    run.session = session  # type: ignore[attr-defined] - handy for inspection in tests
    return run


_references: dict[tuple, ModelFn] = {}
_references_lock = threading.Lock()


def fp32_reference(cfg: ModelConfig) -> ModelFn:
    """The FP32 model on ONNX Runtime CPU, as a `feeds -> outputs` callable.

    One session per ONNX file (keyed by path, size and mtime), shared by
    every model config that uses it and kept for the process lifetime: the
    gate runs at every (re)load.

    Raises:
        PrecisionError: ONNX Runtime cannot load the file.
    """
    path = Path(cfg.onnx).resolve()
    try:
        stat = path.stat()
    except OSError as exc:
        raise PrecisionError(f"FP32 reference model not readable: {path}: {exc.strerror or exc}") from exc
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _references_lock:
        if key not in _references:
            _references[key] = session_callable(path, "all")
        return _references[key]


# -- the gate -----------------------------------------------------------------

def _item(outputs: Mapping[str, np.ndarray], order: list[str]) -> dict[str, np.ndarray]:
    """First batch item of each output, in the FP32 model's output order.

    Postprocessors read outputs by position (CenterFace: heatmap, scale,
    offset, landmarks), so a backend listing them in another order must not
    change the answer.
    """
    keys = order if set(order) == set(outputs) else list(outputs)
    return {k: np.asarray(outputs[k])[:1] for k in keys}


def _refuse(precision: str, gate_metric: str, threshold: float, reason: str,
            metrics: dict | None = None, samples: int = 0) -> AccuracyReport:
    report = AccuracyReport(precision, metrics or {}, gate_metric, threshold, False, samples, reason)
    log.warning("accuracy gate: %s", report.summary())
    return report


def evaluate_accuracy(cfg: ModelConfig, precision: str, candidate: ModelFn, reference: ModelFn,
                      progress: Callable[[str], None] = lambda _m: None) -> AccuracyReport:
    """Compare `candidate` (reduced precision) with `reference` (FP32) on the validation images.

    Args:
        cfg: the model's config: task and postprocessing, input preprocessing,
            `calibration.validation` (else `calibration.images`), `max_images`
            and the task's threshold.
        precision: name of the candidate's precision, for the report.
        candidate: `feeds -> outputs` of the model under test (e.g. `runner.infer`).
        reference: `feeds -> outputs` of the FP32 model (e.g. `fp32_reference(cfg)`).
        progress: called per sample ("validating 3/24 (int8)").

    Returns:
        AccuracyReport. `passed` is False, with the reason, when there are no
        validation images, when a model fails on a sample, or when the gate
        metric is below its threshold. fp32 passes without running.
    """
    task = cfg.postprocess.task
    gate_metric, threshold_key = GATES[task]
    threshold = float(getattr(cfg.calibration, threshold_key))
    if precision == "fp32":
        return AccuracyReport(precision, {}, gate_metric, threshold, True, 0, "fp32 is the reference")

    source = validation_source(cfg)
    if source is None:
        return _refuse(precision, gate_metric, threshold,
                       f"no validation images to check {precision} against fp32: set "
                       f"[calibration] validation or images (a folder of images or a video)")
    try:
        samples = load_samples(source, cfg.input, cfg.calibration.max_images, what="validation",
                               progress=progress)
        graph = read_graph_io(Path(cfg.onnx))
        input_name, dims = graph.image_input(cfg.input.tensor)
        labels = load_labels(cfg.postprocess.labels)
    except EdgeInferError as exc:
        return _refuse(precision, gate_metric, threshold, f"cannot run the gate: {exc}")
    batch = fixed_batch(dims)
    post = postprocessor_for(cfg.postprocess, labels)
    # Classification is compared on the model's ranking, not on the configured
    # score cut or top_k; detectors on exactly what a client would receive.
    options = Options(top_k=5, score_threshold=0.0) if task == "classification" else Options()
    order = graph.outputs

    ref_raw, cand_raw, ref_results, cand_results = [], [], [], []
    for i, sample in enumerate(samples, 1):
        progress(f"validating {i}/{len(samples)} ({precision})")
        tensor = sample.tensor[None]
        if batch > 1:
            tensor = np.repeat(tensor, batch, axis=0)
        feeds = {input_name: tensor}
        try:
            ref_out = _item(reference(feeds), order)
        except Exception as exc:  # noqa: BLE001 - any failure refuses, with its reason
            return _refuse(precision, gate_metric, threshold,
                           f"fp32 reference failed on {sample.name}: {exc}", samples=i - 1)
        try:
            cand_out = _item(candidate(feeds), order)
        except Exception as exc:  # noqa: BLE001
            return _refuse(precision, gate_metric, threshold,
                           f"{precision} model failed on {sample.name}: {exc}", samples=i - 1)
        ref_raw.append(ref_out)
        cand_raw.append(cand_out)
        if task != "raw":
            ref_results.append(post(ref_out, sample.transform, options))
            try:
                cand_results.append(post(cand_out, sample.transform, options))
            except Exception as exc:  # noqa: BLE001 - e.g. NaN maps from an fp16 overflow
                return _refuse(precision, gate_metric, threshold,
                               f"{precision} outputs on {sample.name} cannot be postprocessed: {exc}",
                               samples=i - 1)

    metrics: dict[str, float] = {}
    if task == "classification":
        metrics.update(classification_figures(ref_results, cand_results))
    elif task in ("centerface", "yolov8"):
        metrics.update(detection_figures(ref_results, cand_results))
    metrics.update(tensor_figures(ref_raw, cand_raw))

    value = metrics[gate_metric]
    passed = math.isfinite(value) and value >= threshold
    others = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != gate_metric)
    reason = (f"{gate_metric} {value:.4f} {'>=' if passed else '<'} {threshold_key} {threshold} "
              f"on {len(samples)} validation samples from {source.name} ({others})")
    if task in ("centerface", "yolov8") and metrics.get("reference_boxes", 0) == 0:
        reason += "; the fp32 model found no box on any validation image, so the IoU gate only " \
                  "checks that none appear"
    report = AccuracyReport(precision, metrics, gate_metric, threshold, passed, len(samples), reason)
    if passed:
        log.info("accuracy gate: %s", report.summary())
    else:
        log.warning("accuracy gate: %s", report.summary())
    return report
