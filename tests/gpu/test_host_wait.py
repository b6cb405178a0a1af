"""[server] cuda_sync: how a thread waiting for the GPU waits, seen in its own CPU time.

Each mode runs in a fresh process (the flags belong to the process's CUDA
context): a chain of large MatMuls on ONNX Runtime's CUDA EP keeps the GPU busy
for tens of milliseconds per run, and the calling thread's CPU time during the
run says whether it spun (CPU ~ wall time) or slept (CPU << wall time).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.gpu

_CHILD = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    import onnxruntime as ort
    from edgeinfer.runtime.gpu.memory import host_wait_flags, set_host_wait

    mode, path = sys.argv[1], sys.argv[2]
    applied = set_host_wait(mode)
    # [n, 64] @ [64, n] makes an [n, n] of ones on the device, a chain of [n, n] @ [n, n] keeps the GPU
    # busy, a mean brings back one number: host copies (CPU work for pageable memory) stay small.
    n, links = 8192, 12
    w1 = numpy_helper.from_array(np.full((64, n), 1.0 / 64, np.float32), name="w1")
    w = numpy_helper.from_array(np.full((n, n), 1.0 / n, np.float32), name="w")
    nodes, prev = [helper.make_node("MatMul", ["x", "w1"], ["a"])], "a"
    for i in range(links):
        nodes.append(helper.make_node("MatMul", [prev, "w"], [f"y{i}"]))
        prev = f"y{i}"
    nodes.append(helper.make_node("ReduceMean", [prev], ["m"], keepdims=0))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, 64])],
                              [helper.make_tensor_value_info("m", TensorProto.FLOAT, [])], initializer=[w1, w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 9
    onnx.save(model, path)
    session = ort.InferenceSession(path, providers=["CUDAExecutionProvider"])
    x = np.ones((n, 64), np.float32)
    session.run(None, {"x": x})  # warm-up: cuBLAS handles, workspace
    cpu = wall = 0.0
    for _ in range(5):
        c0, t0 = time.thread_time(), time.perf_counter()
        out = session.run(None, {"x": x})[0]
        cpu += time.thread_time() - c0
        wall += time.perf_counter() - t0
    print(json.dumps({"applied": applied, "flags": host_wait_flags(0), "cpu_share": cpu / wall,
                      "run_ms": wall / 5 * 1e3, "ok": bool(np.allclose(out, 1.0, rtol=1e-3))}))
""")


def _measure(mode: str, tmp_path) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run([sys.executable, "-c", _CHILD, mode, str(tmp_path / f"chain-{mode}.onnx")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_block_sleeps_while_spin_burns_a_core(ort_cuda, tmp_path):
    spin = _measure("spin", tmp_path)
    block = _measure("block", tmp_path)
    auto = _measure("auto", tmp_path)
    print(f"spin {spin}\nblock {block}\nauto {auto}")
    assert spin["ok"] and block["ok"] and auto["ok"]
    assert (spin["applied"], block["applied"], auto["applied"]) == (True, True, False)
    assert (spin["flags"], block["flags"]) == (1, 4)
    # The run must be long enough for the wait to dominate its CPU time.
    assert min(spin["run_ms"], block["run_ms"]) > 10, (spin, block)
    assert spin["cpu_share"] > 0.7, spin
    assert block["cpu_share"] < 0.3, block
