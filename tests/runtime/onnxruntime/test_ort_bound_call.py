"""Batch-1 IO binding on a CPU session (runtime/onnxruntime/bound_call.py): real ONNX Runtime, real models."""
from __future__ import annotations

import gc
import weakref

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeinfer.runtime.onnxruntime.bound_call import CpuBoundCall
from edgeinfer.runtime.onnxruntime.runner import OnnxRuntimeRunner
from edgeinfer.errors import InferenceError


def _session(model: onnx.ModelProto, tmp_path):
    import onnxruntime as ort

    model.ir_version = 9
    onnx.checker.check_model(model)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "bound_call_test", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.fixture
def add_and_nonzero(tmp_path):
    """y = x + 1 (shape fixed at batch 1) and nz = NonZero(x > 0) (its length depends on the values)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])
    nz = helper.make_tensor_value_info("nz", TensorProto.INT64, [2, "K"])
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [helper.make_node("Add", ["x", "one"], ["y"]),
             helper.make_node("Greater", ["x", "zero"], ["pos"]),
             helper.make_node("NonZero", ["pos"], ["nz"])]
    return OnnxRuntimeRunner(_session(_model(nodes, [x], [y, nz], [zero, one]), tmp_path))


def test_bound_call_answers_as_session_run_call_after_call(add_and_nonzero):
    runner = add_and_nonzero
    call = runner.bound_call()
    assert isinstance(call, CpuBoundCall) and call.inputs["x"].shape == (1, 8)
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.standard_normal((1, 8)).astype(np.float32)
        call.inputs["x"][...] = x
        got = call.run()
        want = runner.infer_impl({"x": x})
        assert list(got) == ["y", "nz"]
        np.testing.assert_array_equal(got["y"], want["y"])
        # nz's length follows the values: ORT sizes it on each call, nothing stale is left over.
        np.testing.assert_array_equal(got["nz"], want["nz"])
        assert got["nz"].shape == (2, int((x > 0).sum()))


class _PublicOnly:
    """A session that offers only ONNX Runtime's public methods, as a release without the private
    names the direct call uses would."""

    def __init__(self, session):
        self.io_binding = session.io_binding
        self.run_with_iobinding = session.run_with_iobinding


def test_the_direct_call_and_the_public_method_answer_alike(add_and_nonzero):
    runner = add_and_nonzero
    session = runner.session
    specs = (runner.inputs, runner.outputs, [(1, 8)])
    direct = CpuBoundCall(session, *specs)
    public = CpuBoundCall(_PublicOnly(session), *specs)
    # Where ORT has them, the call goes to the compiled session with kept RunOptions, else the public method.
    assert direct._run.func == session._sess.run_with_iobinding and len(direct._run.args) == 2
    assert public._run.func == session.run_with_iobinding
    rng = np.random.default_rng(1)
    for _ in range(4):
        x = rng.standard_normal((1, 8)).astype(np.float32)
        direct.inputs["x"][...] = x
        public.inputs["x"][...] = x
        got, want = direct.run(), public.run()
        np.testing.assert_array_equal(got["y"], x + 1)
        np.testing.assert_array_equal(want["y"], x + 1)
        np.testing.assert_array_equal(got["nz"], want["nz"])


def test_bound_call_writes_into_its_own_buffers(add_and_nonzero):
    call = add_and_nonzero.bound_call()
    call.inputs["x"][...] = 1.0
    first = call.run()["y"]
    call.inputs["x"][...] = 5.0
    second = call.run()["y"]
    assert second is first  # the caller copies what must outlive the next call
    np.testing.assert_array_equal(second, np.full((1, 8), 6.0, np.float32))
    other = add_and_nonzero.bound_call()  # a second caller gets buffers of its own
    assert other.inputs["x"] is not call.inputs["x"]


def test_no_bound_call_when_an_input_axis_besides_the_batch_is_dynamic(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "W"])
    runner = OnnxRuntimeRunner(_session(_model([helper.make_node("Identity", ["x"], ["y"])], [x], [y]), tmp_path))
    assert runner.bound_call() is None


def test_a_failing_run_raises_inference_error_and_the_call_stays_usable(tmp_path):
    # Reshape to a shape taken from an input: a wrong shape fails inside ORT's Run().
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])
    s = helper.make_tensor_value_info("s", TensorProto.INT64, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, -1])
    runner = OnnxRuntimeRunner(_session(_model([helper.make_node("Reshape", ["x", "s"], ["y"])], [x, s], [y]),
                                        tmp_path))
    call = runner.bound_call()
    call.inputs["x"][...] = np.arange(6, dtype=np.float32)
    call.inputs["s"][...] = [4, 5]
    with pytest.raises(InferenceError, match="onnxruntime failed"):
        call.run()
    call.inputs["s"][...] = [3, 2]
    np.testing.assert_array_equal(call.run()["y"], np.arange(6, dtype=np.float32).reshape(3, 2))


def test_deactivating_the_runner_closes_its_bound_calls(add_and_nonzero):
    runner = add_and_nonzero
    runner.activate()
    call = runner.bound_call()
    call.run()
    alive = weakref.ref(runner.session)
    runner.deactivate()
    gc.collect()
    assert alive() is None  # the call no longer holds the session
    with pytest.raises(InferenceError, match="deactivated"):
        call.run()
