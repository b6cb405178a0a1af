"""Small real ONNX graphs written by tests."""
from __future__ import annotations

from pathlib import Path


def write_onnx(path: Path, shape=("N", 3, 8, 8), scale: float = 1.0) -> Path:
    """A real ONNX file: output = ReduceMean(input * scale) over C,H,W."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, list(shape))
    out = helper.make_tensor_value_info("probs", TensorProto.FLOAT, [shape[0], 1])
    k = numpy_helper.from_array(np.array([scale], dtype=np.float32), "k")
    axes = numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int64), "axes")
    nodes = [helper.make_node("Mul", ["input", "k"], ["scaled"]),
             helper.make_node("ReduceMean", ["scaled", "axes"], ["mean"], keepdims=1),
             helper.make_node("Reshape", ["mean", "oshape"], ["probs"])]
    oshape = numpy_helper.from_array(np.array([-1, 1], dtype=np.int64), "oshape")
    graph = helper.make_graph(nodes, "tiny", [inp], [out], [k, axes, oshape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.save(model, str(path))
    return path
