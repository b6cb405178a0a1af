"""Reduced precisions as ONNX -> ONNX transforms, and the accuracy gate.

- `prepare_precision(cfg, precision, cache_dir)`: fp16 (FP16 weights, FP32
  I/O) or int8 (static QDQ, calibrated on the model's representative images),
  cached under `<cache_dir>/onnx/`. One kind of file for TensorRT 10, 11 and
  ONNX Runtime.
- `evaluate_accuracy(cfg, precision, candidate, reference)`: compares answers
  with the FP32 model on validation images; `fp32_reference(cfg)` is that model.
- `calibration_data_hash(cfg)`: the calibration-data part of engine cache keys.

Modules: samples (image sets), fp16, int8, cache (variant files), prepare,
metrics, gate. This package imports onnx; onnxruntime.quantization is
imported only when an int8 variant is made.
"""
from __future__ import annotations

from edgeinfer.model.precision.base import PrecisionError, PreparedModel
from edgeinfer.model.precision.fp16 import Fp16Settings
from edgeinfer.model.precision.gate import AccuracyReport, evaluate_accuracy, fp32_reference, session_callable
from edgeinfer.model.precision.int8 import Int8Settings
from edgeinfer.model.precision.prepare import prepare_precision
from edgeinfer.model.precision.samples import calibration_data_hash

__all__ = [
    "AccuracyReport",
    "Fp16Settings",
    "Int8Settings",
    "PrecisionError",
    "PreparedModel",
    "calibration_data_hash",
    "evaluate_accuracy",
    "fp32_reference",
    "prepare_precision",
    "session_callable",
]
