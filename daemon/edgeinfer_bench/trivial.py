"""The transport target: a model that does almost nothing (y = x + 1 on a small float tensor).

Served through the raw-tensor path, it makes the daemon's per-request cost
visible next to the bare echo server: whatever the daemon adds over echo is
serving overhead, not inference.
"""
from __future__ import annotations

from pathlib import Path

from edgeinfer.config import ModelConfig, OnnxRuntimeConfig, PostprocessConfig

NAME = "trivial"
INPUT = "x"
OUTPUT = "y"
# 64 float32 = 256 bytes of tensor data: a small message, like the 64 B anchor.
WIDTH = 64


def build_trivial_onnx(path: Path, width: int = WIDTH) -> Path:
    """Write y = x + 1, x: float32 [N, width], to `path` (IR 9, opset 13: loads on ONNX Runtime >= 1.15)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    one = numpy_helper.from_array(np.ones((1, width), np.float32), name="one")
    graph = helper.make_graph(
        [helper.make_node("Add", [INPUT, "one"], [OUTPUT], name="add_one")],
        "edgeinfer_bench_trivial",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", width])],
        initializer=[one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="edgeinfer-bench")
    model.ir_version = 9
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def trivial_model_config(onnx_path: Path) -> ModelConfig:
    """A served-model config for the trivial model: ONNX Runtime, one intra-op thread, raw outputs.

    One intra-op thread: a 64-element add gains nothing from a thread pool,
    and the pool's spinning threads would take CPU from the gRPC threads.
    """
    return ModelConfig(
        name=NAME, onnx=str(onnx_path), backends=["onnxruntime"], warmup_runs=2,
        postprocess=PostprocessConfig(task="raw"),
        onnxruntime=OnnxRuntimeConfig(providers=["CPUExecutionProvider"], intra_op_threads=1,
                                      inter_op_threads=1),
    )
