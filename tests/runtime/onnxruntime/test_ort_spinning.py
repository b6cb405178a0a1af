"""`[models.onnxruntime] intra_op_spinning`: the loader's sessions spin or sleep as configured.

Whether ORT's pool threads then busy-wait is ORT's own behaviour (measured in
docs/decisions.md, not timed here); what is ours is that the option
reaches the session the runner serves with and that the default leaves ORT's
own choice alone (a wrong value is refused in tests/test_config.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeinfer.runtime import LoadRequest
from edgeinfer.runtime.onnxruntime.loader import RunnerFromOnnx
from edgeinfer_bench.trivial import INPUT, OUTPUT, WIDTH, build_trivial_onnx
from edgeinfer.config import ModelConfig, OnnxRuntimeConfig

SPIN_KEY = "session.intra_op.allow_spinning"


def _runner(tmp_path: Path, **ort_options):
    onnx_path = build_trivial_onnx(tmp_path / "trivial.onnx")
    model = ModelConfig(name="m", onnx=str(onnx_path), backends=["onnxruntime"],
                        onnxruntime=OnnxRuntimeConfig(providers=["CPUExecutionProvider"], **ort_options))
    return RunnerFromOnnx(LoadRequest(model=model, onnx_path=onnx_path))()


def _spin_entry(runner) -> str:
    """The entry as the served session has it; "unset" where never set (ORT then spins, its default)."""
    try:
        return runner.session.get_session_options().get_session_config_entry(SPIN_KEY)
    except RuntimeError:  # ORT raises for a key never set
        return "unset"


def test_sleeping_threads_reach_the_served_session(tmp_path):
    runner = _runner(tmp_path, intra_op_spinning=False, intra_op_threads=2)
    try:
        assert _spin_entry(runner) == "0"
        x = np.arange(WIDTH, dtype=np.float32).reshape(1, WIDTH)
        out = runner.infer({INPUT: x})
        np.testing.assert_array_equal(out[OUTPUT], x + 1)  # still answers, and right
    finally:
        runner.deactivate()


def test_default_leaves_ort_spinning(tmp_path):
    runner = _runner(tmp_path)
    try:
        assert _spin_entry(runner) == "unset"
    finally:
        runner.deactivate()
