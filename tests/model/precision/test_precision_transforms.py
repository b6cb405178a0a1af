"""FP16 and INT8 transforms on the real models, gated against FP32 on real photos and frames.

Runs on CPU ONNX Runtime. INT8 candidates are run two ways:
- "qdq": ORT at its basic optimization level, which folds constants but does
  not fuse Q/DQ (that is extended level), so the Q/DQ graph is executed as
  written (float math between Q/DQ pairs) -- the semantics TensorRT
  implements with int8 kernels and int32 accumulation. This is what the
  transform itself is judged on. (No TensorRT engine ran here.)
- "ort-cpu": ORT's default optimizations, which fuse Q/DQ into its own int8
  CPU kernels; printed only (EfficientNet), since it depends on the CPU
  (VNNI or not).

Every test prints the measured figures (pytest -s shows them).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from edgeinfer.model.precision import evaluate_accuracy, fp32_reference, session_callable
from edgeinfer.model.precision.int8 import output_layers
from edgeinfer.model.precision.samples import load_samples


def _show(title: str, report) -> None:
    print(f"\n{title}: {report.summary()}")


# -- structure of the transformed files ------------------------------------------

def _io_types(model: onnx.ModelProto) -> set[int]:
    init = {i.name for i in model.graph.initializer}
    return {v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)
            if v.name not in init}


@pytest.mark.parametrize("model", ["imagenet", "faces"])
def test_fp16_variant_has_fp16_weights_and_fp32_io(prepared, model):
    variant, _ = prepared[(model, "fp16")]
    m = onnx.load(str(variant.onnx_path))
    onnx.checker.check_model(m)  # also checks topological order
    assert _io_types(m) == {TensorProto.FLOAT}, "graph inputs/outputs must stay FP32 (keep_io_types)"
    halves = sum(i.data_type == TensorProto.FLOAT16 for i in m.graph.initializer)
    floats = sum(i.data_type == TensorProto.FLOAT for i in m.graph.initializer)
    print(f"\n{model} fp16: {halves} fp16 initializers, {floats} fp32 initializers")
    assert halves > floats
    assert variant.calibration_hash is None


@pytest.mark.parametrize("model", ["imagenet", "faces"])
def test_int8_variant_is_tensorrt_shaped_qdq(prepared, model):
    variant, _ = prepared[(model, "int8")]
    m = onnx.load(str(variant.onnx_path))
    onnx.checker.check_model(m)
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 13
    assert {o.domain for o in m.opset_import} <= {"", "ai.onnx"}, "no ORT-only domains for TensorRT"
    assert _io_types(m) == {TensorProto.FLOAT}
    init = {i.name: i for i in m.graph.initializer}
    quant = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    dequant = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
    assert quant and dequant
    # TensorRT: symmetric (zero point 0), signed int8 activations.
    for q in quant:
        zp = onnx.numpy_helper.to_array(init[q.input[2]])
        assert zp.dtype == np.int8 and not zp.any(), q.name
    # Per-channel weights: DequantizeLinear of a constant with a vector scale.
    per_channel = [d for d in dequant if d.input[0] in init
                   and onnx.numpy_helper.to_array(init[d.input[1]]).size > 1]
    assert per_channel
    # The output layers were kept in float: no DequantizeLinear feeds their weights.
    producers = {o: n for n in m.graph.node for o in n.output}
    kept = [n for n in m.graph.node if n.name in set(output_layers(m))]
    assert kept
    for node in kept:
        if node.op_type in ("Conv", "Gemm", "ConvTranspose", "MatMul"):
            weight = producers.get(node.input[1])
            assert weight is None or weight.op_type != "DequantizeLinear", node.name
    print(f"\n{model} int8: {len(quant)} Q, {len(dequant)} DQ ({len(per_channel)} per-channel weights), "
          f"float output layers {[n.name for n in kept]}")
    assert variant.calibration_hash and len(variant.calibration_hash) == 64


def test_int8_calibration_reports_progress(prepared):
    _, progress = prepared[("faces", "int8")]
    steps = progress.calibrating()
    print(f"\nfaces int8 progress: {steps[0]} ... {steps[-1]} ({len(progress.messages)} messages)")
    assert steps[0] == "calibrating 1/26" and steps[-1] == "calibrating 26/26"
    assert len(steps) == 26


# -- FP16: agreement close to 1 ----------------------------------------------------

def test_fp16_classifier_agrees_with_fp32(prepared, imagenet_cfg):
    variant, _ = prepared[("imagenet", "fp16")]
    report = evaluate_accuracy(imagenet_cfg, "fp16", session_callable(variant.onnx_path),
                               fp32_reference(imagenet_cfg))
    _show("EfficientNet-Lite0 fp16", report)
    assert report.passed and report.samples == 26
    # One flip among 26 would be 0.96: FP16 rounding may decide a near tie.
    assert report.metrics["top1_agreement"] >= 0.96
    assert report.metrics["top5_overlap"] >= 0.95
    assert report.metrics["cosine_min"] >= 0.999


@pytest.mark.slow
def test_fp16_face_boxes_agree_with_fp32(prepared, faces_cfg):
    variant, _ = prepared[("faces", "fp16")]
    report = evaluate_accuracy(faces_cfg, "fp16", session_callable(variant.onnx_path), fp32_reference(faces_cfg))
    _show("CenterFace fp16", report)
    assert report.passed
    assert report.metrics["mean_iou"] >= 0.98
    assert report.metrics["count_agreement"] >= 0.96


# -- INT8 ---------------------------------------------------------------------------

@pytest.mark.slow
def test_int8_face_boxes_iou_against_fp32(prepared, faces_cfg):
    variant, _ = prepared[("faces", "int8")]
    reference = fp32_reference(faces_cfg)
    report = evaluate_accuracy(faces_cfg, "int8", session_callable(variant.onnx_path, "basic"), reference)
    _show("CenterFace int8 (qdq)", report)
    # A face in each of the 23 frames, astronaut and cameraman: the IoU is measured on real boxes.
    assert report.metrics["reference_boxes"] >= 25
    # Measured 0.93 with these settings; the gate (and the issue) ask for 0.9.
    assert report.metrics["mean_iou"] >= 0.9
    assert report.metrics["count_agreement"] >= 0.9
    assert report.passed, report.reason


@pytest.mark.slow
def test_int8_classifier_agreement_photos_and_frames(prepared, imagenet_cfg, val_stills):
    """INT8 keeps the photos' answers but moves the frames' Windsor-tie/bow-tie tie.

    The carphone frames show a tie that FP32 itself calls "Windsor tie" or
    "bow tie" with logit margins under 1.5; INT8 drifts to "bow tie". With
    the default min_top1_agreement of 0.9 the gate therefore refuses INT8 on
    this validation set, and says why: the loader would serve FP16.
    """
    variant, _ = prepared[("imagenet", "int8")]
    candidate = session_callable(variant.onnx_path, "basic")
    reference = fp32_reference(imagenet_cfg)
    report = evaluate_accuracy(imagenet_cfg, "int8", candidate, reference)
    _show("EfficientNet-Lite0 int8 (qdq)", report)
    _show("EfficientNet-Lite0 int8 (ort-cpu kernels, not asserted)",
          evaluate_accuracy(imagenet_cfg, "int8", session_callable(variant.onnx_path, "all"), reference))

    # Per-sample view, photos and frames separately.
    samples = load_samples(Path(imagenet_cfg.calibration.validation), imagenet_cfg.input,
                           imagenet_cfg.calibration.max_images)
    photo_agree, frame_agree = [], []
    for s in samples:
        a = reference({"input": s.tensor[None]})["logits"][0]
        b = candidate({"input": s.tensor[None]})["logits"][0]
        (photo_agree if s.name in val_stills else frame_agree).append(int(a.argmax() == b.argmax()))
    print(f"top-1 agreement: photos {sum(photo_agree)}/{len(photo_agree)}, "
          f"frames {sum(frame_agree)}/{len(frame_agree)}")

    assert len(photo_agree) == 3 and len(frame_agree) == 23
    # Photos (held out, margins 0.44..4.8 logits): the answer is kept.
    assert sum(photo_agree) == 3
    # Every INT8 answer is among FP32's five best: drift between near ties, not nonsense.
    assert report.metrics["top1_in_reference_top5"] == 1.0
    assert report.metrics["top5_overlap"] >= 0.9          # measured 0.98
    assert report.metrics["cosine_mean"] >= 0.97          # measured 0.98
    # The frames' tie moves (measured: 9 of 23 frames flip, 0.65 overall): refused, with the number.
    assert report.metrics["top1_agreement"] < imagenet_cfg.calibration.min_top1_agreement
    assert not report.passed
    assert "top1_agreement" in report.reason and "< min_top1_agreement 0.9" in report.reason
