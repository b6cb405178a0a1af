"""FP32 -> FP16 ONNX conversion, graph inputs and outputs kept FP32.

Converter choice: onnxruntime's own `onnxruntime.transformers.float16`.

- It ships inside the onnxruntime wheel the daemon already depends on: no new
  dependency (it needs `packaging`, an onnxruntime requirement).
- onnxconverter-common is the upstream of the same code (ORT's copy adds
  keep_io_types by name, opset-aware Resize handling, force_fp16_initializers)
  and would be one more package to track (its 1.14 release pinned protobuf).
- ModelOpt AutoCast chooses per node from measured ranges, which is better
  for models with fp16 overflow, but nvidia-modelopt is a heavy install
  (torch-side tooling) that Jetson images do not carry.

The result is plain ONNX (Cast nodes at the edges, fp16 weights), which
TensorRT 10 and 11 (strongly typed) and ONNX Runtime all take as is.

Side effect to know: importing `onnxruntime.transformers` appends that folder
to sys.path (its `__init__` does, for its scripts), so top-level names such
as `benchmark` or `float16` would resolve to ORT's scripts if nothing else
provides them. It cannot be undone: onnxruntime.quantization itself relies on
it (`from fusion_utils import ...`). It is imported only when a transform runs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from edgeinfer.model.precision.base import PrecisionError, normalize_graph, sort_topologically

log = logging.getLogger(__name__)

# Ops kept in FP32 on top of ORT's default block list (ML-domain ops, NMS,
# TopK, Range, CumSum, Min/Max, Upsample, ...). These square or exponentiate:
# exp overflows fp16 above x = 11.1, a sum of squares above 65504. A blocked
# op computes in fp32; its output is fp16 again only where an fp16 op reads
# it (chains of blocked ops and graph outputs stay fp32, see below).
EXTRA_FP16_BLOCKED_OPS = ("Exp", "Log", "Pow", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp",
                          "LpNormalization")


def _float16_module():
    from onnxruntime.transformers import float16

    return float16


def default_block_list() -> tuple[str, ...]:
    return tuple(sorted(set(_float16_module().DEFAULT_OP_BLOCK_LIST) | set(EXTRA_FP16_BLOCKED_OPS)))


@dataclass(frozen=True)
class Fp16Settings:
    """FP16 transform settings; all of them are part of the variant cache key."""

    # Op types left in FP32 (Cast nodes are inserted around them).
    op_block_list: tuple[str, ...] = field(default_factory=default_block_list)
    # Node names left in FP32, for a model-specific fragile node.
    node_block_list: tuple[str, ...] = ()


def drop_fp16_round_trips(model: onnx.ModelProto) -> int:
    """Remove fp32 -> fp16 -> fp32 Cast pairs; returns how many were removed.

    The converter wraps every blocked node in Casts, output included, so two
    blocked nodes in a row (Exp -> Log) and a blocked node before a graph
    output still pass their values through fp16, which defeats the block list
    (exp(20) becomes inf between them). The second Cast is rewired to read the
    first one's input; the first is dropped when nothing else reads it. Only
    a rounding step disappears; TensorRT and ORT remove a float->float Cast.
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def cast_to(node) -> int:
        return next((a.i for a in node.attribute if a.name == "to"), -1)

    removed = 0
    for node in list(graph.node):
        if node.op_type != "Cast" or cast_to(node) != onnx.TensorProto.FLOAT:
            continue
        first = producer.get(node.input[0])
        if first is None or first.op_type != "Cast" or cast_to(first) != onnx.TensorProto.FLOAT16:
            continue
        source = first.input[0]
        source_node = producer.get(source)
        # Only undo the converter's own casts around fp32 (blocked) nodes.
        if source_node is None or source_node.op_type == "Cast":
            continue
        node.input[0] = source
        consumers[first.output[0]].remove(node)
        consumers.setdefault(source, []).append(node)
        if not consumers[first.output[0]] and first.output[0] not in outputs:
            graph.node.remove(first)
        removed += 1
    return removed


def convert_fp16(src: Path, dst: Path, settings: Fp16Settings) -> None:
    """Write an FP16 copy of `src` to `dst` with FP32 graph inputs and outputs.

    Raises:
        PrecisionError: the converter or the ONNX checker refused the model.
    """
    float16 = _float16_module()
    try:
        model = normalize_graph(onnx.load(str(src)))
        converted = float16.convert_float_to_float16(
            model,
            keep_io_types=True,  # clients and the preprocessor keep sending float32
            op_block_list=list(settings.op_block_list),
            node_block_list=list(settings.node_block_list),
        )
        dropped = drop_fp16_round_trips(converted)
        if dropped:
            log.debug("%s: removed %d fp32->fp16->fp32 cast pairs", Path(src).name, dropped)
        sort_topologically(converted)
        onnx.checker.check_model(converted)
    except PrecisionError:
        raise
    except Exception as exc:  # noqa: BLE001 - converter and checker raise assorted types
        raise PrecisionError(f"fp16 conversion of {Path(src).name} failed: {exc}") from exc
    onnx.save(converted, str(dst))
