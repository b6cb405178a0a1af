"""FP32 -> INT8 ONNX by static post-training quantization in QDQ form (explicit quantization).

Tool choice: `onnxruntime.quantization.quantize_static` with QuantFormat.QDQ.

- It is part of the onnxruntime wheel the daemon already requires.
- The output is standard QuantizeLinear/DequantizeLinear pairs, which TensorRT
  10 and 11 build as explicitly quantized networks (TensorRT 11 has no
  implicit INT8 / calibrator API left) and ONNX Runtime runs as is.
- NVIDIA ModelOpt (`modelopt.onnx.quantization`) places Q/DQ where TensorRT
  fuses best (inputs of Conv/Gemm only, no output Q/DQ) and so gives slightly
  faster engines, but it is a large dependency with its own CUDA/torch stack
  and no Jetson (JetPack 6) wheels; TensorRT still fuses ORT's placement.

Settings TensorRT needs, and why:
- INT8 activations (not UINT8) with zero point 0 (`ActivationSymmetric`):
  TensorRT only imports symmetric Q/DQ.
- INT8 weights, symmetric ([-127, 127]) and per channel (axis 0 for Conv,
  axis 1 for ConvTranspose, chosen by ORT): per-tensor weight scales lose the
  small channels of depthwise convolutions.
- MinMax calibration: on EfficientNet-Lite0 and CenterFace, Entropy gave the
  same ranges and Percentile was worse and 5x slower (measured here).

What was found on the two real models (CPU, onnxruntime 1.31):
- CenterFace is opset 9. Per-channel DequantizeLinear needs opset 13 (its
  `axis` attribute), so graphs below 13 are converted with
  `onnx.version_converter` first (and the IR version raised to match).
- Its dynamic [N,3,H,W] input needs no fixing: ORT's calibrator runs the
  graph at whatever shape is fed, and the samples come at the model's
  configured input size. ONNX shape inference suffices; ORT's *symbolic* shape
  inference fails on this graph ("Incomplete symbolic shape inference"), so
  pre-processing skips it.
- `quant_pre_process` (ORT basic-level optimizations: constant folding,
  BatchNorm folding) turns EfficientNet's exported padding subgraphs
  (ConstantOfShape/Slice/Pad, 456 nodes) into 145 plain nodes; BatchNorm after
  ConvTranspose would otherwise be quantized as a per-channel weight.
- Q/DQ on op outputs (ORT's default) puts a Conv's pre-activation range on the
  tensor its ReLU6 reads; TensorRT's placement (inputs only) is the default
  here. Same accuracy when Q/DQ is executed as written; through ORT's CPU
  kernels CenterFace keeps mean IoU 0.93 instead of 0.86.
- EfficientNet-Lite0's loss is mostly in the weights (per-channel int8
  weights alone, activations float: logits cosine 0.989), largest in the
  depthwise convolutions with folded BatchNorm. It shifts near ties: on the
  carphone frames FP32 hesitates between "Windsor tie" and "bow tie" and INT8
  says "bow tie" (top-1 agreement ~0.6 there, 1.0 on the photos).
- On an x86 CPU without VNNI, ONNX Runtime's fused S8S8 kernels saturate:
  the EfficientNet QDQ file whose Q/DQ math executed as written gives logits
  cosine 0.98 gives ~0.6 through ORT's int8 kernels there.
  `reduce_range=True` (7-bit weights) is ORT's advice for such CPUs. The
  accuracy gate measures the runner that will serve, so it catches this
  per backend.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import onnx

from edgeinfer.model.precision.base import PrecisionError, default_opset, normalize_graph, prune_opset_imports
from edgeinfer.model.precision.samples import Sample

log = logging.getLogger(__name__)

# Per-channel DequantizeLinear (the `axis` attribute) exists from opset 13.
MIN_QDQ_OPSET = 13
# IR version that goes with opset 13.
MIN_QDQ_IR_VERSION = 7
# Memory: MinMax calibration keeps only per-tensor min/max values per sample
# (ORT adds ReduceMin/ReduceMax outputs), so it stays small at any max_images.
# ORT's `CalibMaxIntermediateOutputs` option must NOT be used: in onnxruntime
# up to at least 1.31 it clears the buffered values without merging them, so
# only the samples after the last flush set the ranges (microsoft/onnxruntime
# #18893; seen here: with 8 and 26 samples only the last 2 counted, with 64 it
# failed with "No data is collected"). Entropy/percentile keep
# histograms of full tensors: heavier, and not better on our models.

# Walking back from a graph output, these pass values through unchanged in
# kind, so the compute node before them is the real "output layer".
_PASS_THROUGH_OPS = frozenset({"Sigmoid", "Relu", "Clip", "Softmax", "Reshape", "Flatten",
                               "Transpose", "Identity", "Squeeze", "Unsqueeze"})
_COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


@dataclass(frozen=True)
class Int8Settings:
    """INT8 transform settings; all of them are part of the variant cache key."""

    per_channel: bool = True
    # True: INT8 zero-point-0 activations, as TensorRT requires.
    symmetric_activations: bool = True
    # 7-bit weights: for ONNX Runtime's int8 kernels on x86 CPUs without VNNI.
    reduce_range: bool = False
    calibrate_method: str = "minmax"   # "minmax", "entropy", "percentile"
    # Keep the layers that produce the model's outputs (classifier Gemm,
    # detector heads) in float: their outputs are the answer and cheap to run.
    keep_output_layers_float: bool = True
    # None = every op type ORT can quantize in QDQ form.
    op_types: Optional[tuple[str, ...]] = None
    # False: Q/DQ only on the inputs of quantized ops (TensorRT's placement).
    # True (ORT's default): also on their outputs, e.g. a Conv's output before
    # its ReLU6 gets the pre-activation's wide range and few levels are left
    # for the [0, 6] values the next layer reads.
    quantize_outputs: bool = False


class _Reader:
    """Feeds preprocessed samples to the calibrator, reporting progress."""

    def __init__(self, samples: Sequence[Sample], input_name: str, batch: int,
                 progress: Callable[[str], None]):
        self.samples = samples
        self.input_name = input_name
        self.batch = batch
        self.progress = progress
        self.index = 0
        self._log_every = max(1, len(samples) // 8)

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        if self.index >= len(self.samples):
            return None
        sample = self.samples[self.index]
        self.index += 1
        message = f"calibrating {self.index}/{len(self.samples)}"
        self.progress(message)
        if self.index == 1 or self.index == len(self.samples) or self.index % self._log_every == 0:
            log.info(message)
        tensor = sample.tensor[None]
        if self.batch > 1:
            tensor = np.repeat(tensor, self.batch, axis=0)
        return {self.input_name: tensor}

    def rewind(self) -> None:
        self.index = 0


def _qdq_op_types() -> list[str]:
    """Every op type ORT's QDQ quantizer handles (its default when none is named)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QDQRegistry) | set(QLinearOpsRegistry))


def output_layers(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that compute the graph outputs, through pass-through ops."""
    producer = {out: node for node in model.graph.node for out in node.output}
    found: list[str] = []
    for output in model.graph.output:
        node = producer.get(output.name)
        while node is not None:
            if node.name not in found:
                found.append(node.name)
            if node.op_type in _COMPUTE_OPS or node.op_type not in _PASS_THROUGH_OPS:
                break
            node = producer.get(node.input[0]) if node.input else None
    return found


def _prepare_graph(src: Path, work: Path) -> Path:
    """Normalized, opset >= 13, ORT-preprocessed copy of `src` in `work`."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = normalize_graph(onnx.load(str(src)))
    if default_opset(model) < MIN_QDQ_OPSET:
        from onnx import version_converter

        log.info("%s: converting opset %d -> %d for per-channel Q/DQ", src.name, default_opset(model),
                 MIN_QDQ_OPSET)
        model = version_converter.convert_version(model, MIN_QDQ_OPSET)
    model.ir_version = max(model.ir_version, MIN_QDQ_IR_VERSION)
    normalized = work / "normalized.onnx"
    onnx.save(model, str(normalized))
    prepared = work / "prepared.onnx"
    quant_pre_process(str(normalized), str(prepared), skip_symbolic_shape=True)
    model = normalize_graph(onnx.load(str(prepared)))  # the optimizer leaves fused nodes unnamed
    foreign = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if foreign:
        # Basic-level ORT optimizations should only fold and fuse standard ops;
        # a contrib op here would not load in TensorRT.
        raise PrecisionError(f"int8 pre-processing produced non-standard ops {foreign}")
    onnx.save(prune_opset_imports(model), str(prepared))
    return prepared


def quantize_int8(src: Path, dst: Path, samples: Sequence[Sample], input_name: str, batch: int,
                  settings: Int8Settings, progress: Callable[[str], None] = lambda _m: None) -> None:
    """Write a QDQ INT8 copy of `src` to `dst`, calibrated on `samples`.

    Args:
        src: FP32 ONNX model.
        dst: where the quantized model goes (overwritten).
        samples: preprocessed calibration samples (no batch dim).
        input_name: the image input the samples feed.
        batch: batch size to feed (1, or the model's fixed batch).
        settings: quantization settings.
        progress: called once per sample ("calibrating 12/64").

    Raises:
        PrecisionError: the model could not be prepared or quantized.
    """
    try:
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                              QuantType, quantize_static)
    except ImportError as exc:  # the module ships in every wheel; its imports (sympy) may not
        raise PrecisionError(f"onnxruntime.quantization is unavailable: {exc}") from exc
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if settings.calibrate_method not in methods:
        raise PrecisionError(f"unknown calibration method {settings.calibrate_method!r} "
                             f"(expected one of {sorted(methods)})")
    # ORT type-checks the reader against its abstract base class.
    reader_cls = type("CalibrationReader", (_Reader, CalibrationDataReader), {})
    reader = reader_cls(samples, input_name, batch, progress)
    with tempfile.TemporaryDirectory(prefix="edgeinfer-int8-") as tmp:
        work = Path(tmp)
        try:
            prepared = _prepare_graph(Path(src), work)
            exclude = output_layers(onnx.load(str(prepared))) if settings.keep_output_layers_float else []
            quantized = work / "quantized.onnx"
            op_types = list(settings.op_types) if settings.op_types else _qdq_op_types()
            quantize_static(
                str(prepared), str(quantized), reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                per_channel=settings.per_channel,
                reduce_range=settings.reduce_range,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=exclude,
                calibrate_method=methods[settings.calibrate_method],
                extra_options={
                    "ActivationSymmetric": settings.symmetric_activations,
                    "WeightSymmetric": True,
                    "OpTypesToExcludeOutputQuantization": [] if settings.quantize_outputs else op_types,
                },
            )
            model = prune_opset_imports(onnx.load(str(quantized)))
            onnx.checker.check_model(model)
        except PrecisionError:
            raise
        except Exception as exc:  # noqa: BLE001 - ORT and onnx raise assorted types
            raise PrecisionError(f"int8 quantization of {Path(src).name} failed: "
                                 f"{type(exc).__name__}: {exc}") from exc
        onnx.save(model, str(dst))


__all__ = ["Int8Settings", "output_layers", "quantize_int8"]
