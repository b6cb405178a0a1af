"""Graph tidying before transforms, on small graphs built with onnx.helper."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeinfer.model.precision import PrecisionError
from edgeinfer.model.precision.base import graph_io, normalize_graph, sort_topologically
from edgeinfer.model.precision.fp16 import Fp16Settings, convert_fp16
from edgeinfer.model.precision.int8 import output_layers


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def test_normalize_drops_weight_inputs_and_unused_weights_but_keeps_subgraph_reads():
    then_branch = helper.make_graph([helper.make_node("Add", ["x", "w_sub"], ["t"])], "then", [],
                                    [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    else_branch = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                                    [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["m"]),
         helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [2])],  # a weight listed as input (old IR)
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("m", TensorProto.FLOAT, [2])],
        initializer=[_const("w", [1, 2]), _const("w_sub", [3, 4]), _const("unused", [0])])
    model = normalize_graph(helper.make_model(graph))
    assert [i.name for i in model.graph.input] == ["x", "cond"]
    assert sorted(i.name for i in model.graph.initializer) == ["w", "w_sub"]
    assert [n.name for n in model.graph.node] == ["Mul_0", "If_1"]
    assert list(graph_io(model).inputs) == ["x", "cond"]
    with pytest.raises(PrecisionError, match="takes 2 inputs"):
        graph_io(model).image_input()


def test_sort_topologically_repairs_appended_nodes():
    nodes = [helper.make_node("Relu", ["a"], ["y"], name="late"), helper.make_node("Neg", ["x"], ["a"], name="early")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model)
    sort_topologically(model)
    onnx.checker.check_model(model)
    assert [n.name for n in model.graph.node] == ["early", "late"]


def test_output_layers_walk_back_through_activations():
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="body"),
             helper.make_node("Conv", ["c1", "w2"], ["c2"], name="head"),
             helper.make_node("Sigmoid", ["c2"], ["heat"], name="act"),
             helper.make_node("Conv", ["c1", "w3"], ["box"], name="box_head")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("heat", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("box", TensorProto.FLOAT, None)],
                              initializer=[_const(n, np.ones((1, 1, 1, 1))) for n in ("w1", "w2", "w3")])
    assert output_layers(helper.make_model(graph)) == ["act", "head", "box_head"]


def test_fp16_keeps_overflow_prone_ops_and_io_in_fp32(tmp_path):
    # y = log(exp(20 x)): exp(20) = 4.9e8 overflows fp16 (max 65504) although y fits.
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["m"], name="scale"),
         helper.make_node("Exp", ["m"], ["e"], name="exp"),
         helper.make_node("Log", ["e"], ["y"], name="log")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], initializer=[_const("k", [20.0])])
    src, dst = tmp_path / "src.onnx", tmp_path / "dst.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(src))
    x = np.array([[0.25, 1.0, 1.0]], np.float32)

    def run() -> np.ndarray:
        import onnxruntime as ort

        return ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    convert_fp16(src, dst, Fp16Settings())
    model = onnx.load(str(dst))
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert next(i for i in model.graph.initializer if i.name == "k").data_type == TensorProto.FLOAT16
    np.testing.assert_allclose(run(), 20 * x, rtol=1e-3)
    producer = {o: n for n in model.graph.node for o in n.output}
    exp = next(n for n in model.graph.node if n.op_type == "Exp")
    log_node = next(n for n in model.graph.node if n.op_type == "Log")
    assert producer[exp.input[0]].op_type == "Cast"   # fp32 in
    # No fp16 round trip between the two fp32 ops: Log reads Exp's output (through a float->float Cast).
    assert producer[log_node.input[0]].input[0] == exp.output[0]
    # Without the block list Exp reads fp16 straight from the fp16 Mul. (ORT's CPU
    # kernels would still compute it in fp32, so only the graph shows the difference.)
    convert_fp16(src, dst, Fp16Settings(op_block_list=()))
    unblocked = onnx.load(str(dst))
    producer = {o: n for n in unblocked.graph.node for o in n.output}
    exp = next(n for n in unblocked.graph.node if n.op_type == "Exp")
    assert producer[exp.input[0]].op_type == "Mul"
