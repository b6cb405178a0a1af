"""The accuracy gate refuses, with its reason, what it must refuse; and its metrics by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from edgeinfer.model.families.postprocess import ClassScore, Detection, Result
from edgeinfer.model.precision import AccuracyReport, evaluate_accuracy, fp32_reference, session_callable
from edgeinfer.model.precision.metrics import (classification_figures, detection_figures,
                                         match_detections, tensor_figures)


# -- refusals on the real models ---------------------------------------------------

@pytest.mark.slow
def test_too_strict_raw_cosine_refuses_int8_but_passes_fp32(prepared, config_factory):
    """min_cosine 0.99999 is above what INT8 reaches: refused with the figure; FP32 itself passes."""
    cfg = config_factory("imagenet", postprocess={"task": "raw", "labels": ""}, min_cosine=0.99999,
                         max_images=10)
    reference = fp32_reference(cfg)
    variant, _ = prepared[("imagenet", "int8")]
    report = evaluate_accuracy(cfg, "int8", session_callable(variant.onnx_path, "basic"), reference)
    print(f"\nraw int8 vs min_cosine 0.99999: {report.summary()}")
    assert isinstance(report, AccuracyReport)
    assert not report.passed and report.gate_metric == "cosine_min" and report.threshold == 0.99999
    assert report.metrics["cosine_min"] < 0.99999
    assert f"cosine_min {report.metrics['cosine_min']:.4f} < min_cosine 0.99999" in report.reason
    assert report.samples == 10
    # The same gate with the FP32 model as candidate: identical outputs pass.
    same = evaluate_accuracy(cfg, "fp16", reference, reference)
    print(f"raw fp32-as-candidate: {same.summary()}")
    assert same.passed and same.metrics["cosine_min"] > 0.9999999 and same.metrics["max_abs_diff"] == 0.0


@pytest.mark.slow
def test_broken_detector_is_refused(faces_cfg):
    """A candidate whose heatmap is wiped (a transform broken on purpose) finds no faces: refused."""
    reference = fp32_reference(faces_cfg)

    def broken(feeds):
        out = dict(reference(feeds))
        first = next(iter(out))
        out[first] = np.zeros_like(out[first])
        return out

    report = evaluate_accuracy(faces_cfg, "int8", broken, reference)
    print(f"\nbroken heatmap: {report.summary()}")
    assert not report.passed
    assert report.metrics["mean_iou"] == 0.0 and report.metrics["candidate_boxes"] == 0.0
    assert report.metrics["reference_boxes"] >= 25
    assert "mean_iou 0.0000 < min_mean_iou 0.9" in report.reason


def test_candidate_that_raises_is_refused_with_the_error(faces_cfg):
    def failing(_feeds):
        raise RuntimeError("engine exploded")

    report = evaluate_accuracy(faces_cfg, "fp16", failing, fp32_reference(faces_cfg))
    assert not report.passed
    assert "fp16 model failed on" in report.reason and "engine exploded" in report.reason


def test_reduced_precision_without_images_is_refused(config_factory, tmp_path):
    # Config validation requires a folder for fp16; an empty one still leaves the gate nothing to run.
    cfg = config_factory("imagenet", precision=["fp16", "fp32"], images="", validation=str(tmp_path))
    report = evaluate_accuracy(cfg, "fp16", lambda f: {}, lambda f: {})
    print(f"\nno images: {report.summary()}")
    assert not report.passed and report.samples == 0
    assert "cannot run the gate" in report.reason and "no images" in report.reason and str(tmp_path) in report.reason


def test_fp32_passes_without_running(imagenet_cfg):
    def never(_feeds):  # pragma: no cover - must not be called
        raise AssertionError("fp32 is not gated")

    report = evaluate_accuracy(imagenet_cfg, "fp32", never, never)
    assert report.passed and report.samples == 0


def test_validation_falls_back_to_calibration_images(config_factory):
    cfg = config_factory("imagenet", validation="", max_images=4)
    reference = fp32_reference(cfg)
    report = evaluate_accuracy(cfg, "fp16", reference, reference)
    assert report.passed and report.samples == 4
    assert "from calibration" in report.reason


# -- metrics by hand -----------------------------------------------------------------

def _det(x1, y1, x2, y2, cls=0):
    return Detection(box=(x1, y1, x2, y2), score=0.9, class_index=cls)


def test_matching_iou_by_hand():
    # overlap 5x10 = 50, union 100 + 100 - 50 = 150; the far box matches nothing
    matched = match_detections([_det(0, 0, 10, 10)], [_det(20, 20, 30, 30), _det(5, 0, 15, 10)])
    assert matched == pytest.approx([50 / 150])


def test_greedy_matching_is_one_to_one_and_class_aware():
    ref = [_det(0, 0, 10, 10), _det(100, 100, 110, 110)]
    cand = [_det(1, 0, 11, 10), _det(0, 0, 10, 10, cls=1), _det(100, 100, 110, 110)]
    matched = sorted(match_detections(ref, cand))
    assert matched == pytest.approx(sorted([90 / 110, 1.0]))  # the class-1 box matches nothing


def test_detection_figures_count_misses_as_zero():
    ref = [Result(detections=[_det(0, 0, 10, 10), _det(50, 50, 60, 60)]), Result(), Result()]
    cand = [Result(detections=[_det(0, 0, 10, 10)]), Result(), Result(detections=[_det(0, 0, 5, 5)])]
    fig = detection_figures(ref, cand)
    # slots: 2 (image 1) + 0 + 1 (an extra box) = 3; matched IoU sum 1.0
    assert fig["mean_iou"] == pytest.approx(1 / 3)
    assert fig["matched_iou"] == pytest.approx(1.0)
    assert fig["count_agreement"] == pytest.approx(1 / 3)
    assert (fig["reference_boxes"], fig["candidate_boxes"]) == (2.0, 2.0)
    assert detection_figures([Result()], [Result()])["mean_iou"] == 1.0  # nothing to find, nothing found


def test_classification_figures_by_hand():
    def res(*ids):
        return Result(classes=[ClassScore(i, str(i), 1.0 / (n + 1)) for n, i in enumerate(ids)])

    ref = [res(1, 2, 3, 4, 5), res(1, 2, 3, 4, 5)]
    cand = [res(1, 2, 3, 4, 9), res(2, 1, 7, 8, 9)]
    fig = classification_figures(ref, cand)
    assert fig["top1_agreement"] == 0.5
    assert fig["top5_overlap"] == pytest.approx((4 / 5 + 2 / 5) / 2)
    assert fig["top1_in_reference_top5"] == 1.0


def test_tensor_figures_treat_nan_as_disagreement():
    ref = [{"y": np.array([1.0, 2.0, 3.0])}, {"y": np.array([1.0, 0.0, 0.0])}]
    cand = [{"y": np.array([1.0, 2.0, 3.0])}, {"y": np.array([np.nan, 0.0, 0.0])}]
    fig = tensor_figures(ref, cand)
    assert fig["cosine_min"] == 0.0 and fig["cosine_mean"] == pytest.approx(0.5)
    assert math.isinf(fig["max_abs_diff"])
    scaled = tensor_figures([{"y": np.array([1.0, 2.0])}], [{"y": np.array([2.0, 4.0])}])
    assert scaled["cosine_min"] == pytest.approx(1.0) and scaled["max_abs_diff"] == pytest.approx(2.0)
