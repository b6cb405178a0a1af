"""Shared pieces of the precision package: its error, its result type, ONNX graph facts.

Kept free of onnxruntime imports so the cheap parts (reading a model's input
name, hashing) do not pull the quantization toolkit in.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import onnx

from edgeinfer.errors import BackendLoadError


class PrecisionError(BackendLoadError):
    """A precision variant could not be made (transform failed, no usable images).

    A subclass of BackendLoadError so the model loader's existing handling
    records it and moves on to the next precision.
    """


@dataclass(frozen=True)
class PreparedModel:
    """The ONNX file to hand to a backend for one precision."""

    onnx_path: Path
    precision: str
    # sha256 of the calibration data (images + preprocessing); None when the
    # variant did not use calibration data (fp32, fp16). Part of engine cache keys.
    calibration_hash: Optional[str]


@dataclass(frozen=True)
class GraphIO:
    """Names and declared shapes of a model's real inputs and its outputs."""

    inputs: dict[str, tuple]   # name -> dims (int, or str/None for symbolic)
    outputs: list[str]

    def image_input(self, wanted: str = "") -> tuple[str, tuple]:
        """The image input: `wanted` when set, else the only input.

        Raises:
            PrecisionError: `wanted` is not an input of the model, or the model
                takes more than one input (calibration and the gate feed images
                only; token ids or masks cannot be made up).
        """
        if len(self.inputs) != 1:
            raise PrecisionError(f"calibration and the accuracy gate feed one image tensor; the model "
                                 f"takes {len(self.inputs)} inputs {sorted(self.inputs)}")
        if wanted:
            if wanted not in self.inputs:
                raise PrecisionError(f"input tensor {wanted!r} is not an input of the model "
                                     f"(inputs: {sorted(self.inputs)})")
            return wanted, self.inputs[wanted]
        name = next(iter(self.inputs))
        return name, self.inputs[name]


def _dims(value_info) -> tuple:
    dims = []
    for d in value_info.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    return tuple(dims)


def graph_io(model: onnx.ModelProto) -> GraphIO:
    """Inputs (initializers listed as inputs by old IR versions excluded) and outputs."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = {i.name: _dims(i) for i in model.graph.input if i.name not in initializers}
    return GraphIO(inputs=inputs, outputs=[o.name for o in model.graph.output])


def read_graph_io(path: Path) -> GraphIO:
    """GraphIO of an ONNX file (external weights are not read)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError, OSError, ...
        raise PrecisionError(f"cannot read ONNX model {path}: {exc}") from exc
    return graph_io(model)


def fixed_batch(dims: tuple) -> int:
    """The batch size a model insists on (a fixed first dim > 1), else 1.

    Samples are fed one at a time; a model exported with a fixed batch of N
    gets the sample repeated N times and item 0 is read back.
    """
    if dims and isinstance(dims[0], int) and dims[0] > 1:
        return dims[0]
    return 1


def _names_used(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name read by a node or output, including inside If/Loop/Scan bodies
    (which may read the outer graph's initializers)."""
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node.input)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                used |= _names_used(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    used |= _names_used(sub)
    return used


def normalize_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """Tidy a graph in place before transforming it; returns it.

    - Initializers listed as graph inputs (IR < 4 exporters) are dropped from
      the inputs: converters would otherwise treat weights as feeds (the fp16
      converter would insert casts on them).
    - Unused initializers (e.g. BatchNorm `num_batches_tracked`) are removed.
    - Unnamed nodes get names: quantization exclusions are by node name.
    """
    graph = model.graph
    initializer_names = {i.name for i in graph.initializer}
    real_inputs = [i for i in graph.input if i.name not in initializer_names]
    if len(real_inputs) != len(graph.input):
        del graph.input[:]
        graph.input.extend(real_inputs)
    used = _names_used(graph)
    kept = [i for i in graph.initializer if i.name in used]
    if len(kept) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept)
    taken = {n.name for n in graph.node if n.name}
    for index, node in enumerate(graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    return model


def prune_opset_imports(model: onnx.ModelProto) -> onnx.ModelProto:
    """Keep only the opset imports of domains that nodes use (plus the default).

    ONNX Runtime's optimizer adds imports for all its own domains; a TensorRT
    parser has no business seeing com.microsoft.* when no node uses it.
    """
    used = {n.domain or "" for n in model.graph.node} | {""}
    keep = [o for o in model.opset_import if (o.domain or "") in used or o.domain == "ai.onnx"]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    return model


def default_opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def sort_topologically(model: onnx.ModelProto) -> onnx.ModelProto:
    """Reorder graph nodes so each comes after the producers of its inputs; returns the model.

    The fp16 converter appends its input Cast nodes at the end of the node
    list. ONNX Runtime sorts graphs itself, but the ONNX checker and
    TensorRT's ONNX parser expect the order the spec requires. Stable: nodes
    already in order keep their relative order.
    """
    graph = model.graph
    nodes = list(graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    waiting_on = [0] * len(nodes)
    consumers: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        deps = {producer[name] for name in node.input if name in producer and producer[name] != i}
        waiting_on[i] = len(deps)
        for d in deps:
            consumers.setdefault(d, []).append(i)
    ready = [i for i, n in enumerate(waiting_on) if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for c in consumers.get(i, ()):
            waiting_on[c] -= 1
            if waiting_on[c] == 0:
                heapq.heappush(ready, c)
    if len(order) != len(nodes):
        raise PrecisionError("the transformed graph has a cycle")
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)
    return model
