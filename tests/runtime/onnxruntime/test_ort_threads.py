"""ONNX Runtime sessions keep to the CPUs this process may use (loader.intra_op_threads).

ORT's default intra-op pool pins one thread per physical core of the machine,
whatever the process's CPU mask: a daemon confined to some cores by taskset or
systemd's CPUAffinity= would compute on the others too. The loader and the
precision gate give ORT an explicit count where the mask is narrower than the
machine; these tests load real sessions in a child process confined to one CPU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeinfer.runtime.onnxruntime.loader import intra_op_threads
from edgeinfer_bench.trivial import build_trivial_onnx

ROOT = Path(__file__).resolve().parents[3]

needs_two_cpus = pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                                    reason="needs a CPU mask of at least 2 CPUs to narrow")

# Child: confine itself to one CPU, make a session the daemon's way (or the gate's), then print
# the CPUs each thread the session started may run on.
_CHILD = r"""
import json, os, sys
from pathlib import Path
os.sched_setaffinity(0, {int(sys.argv[2])})
import onnxruntime  # its own import-time threads are not the session's
before = set(os.listdir("/proc/self/task"))
if sys.argv[3] == "loader":
    from edgeinfer.runtime import LoadRequest
    from edgeinfer.runtime.onnxruntime.loader import RunnerFromOnnx
    from edgeinfer.config import ModelConfig, OnnxRuntimeConfig
    model = ModelConfig(name="m", onnx=sys.argv[1], backends=["onnxruntime"],
                        onnxruntime=OnnxRuntimeConfig(providers=["CPUExecutionProvider"]))
    keep = RunnerFromOnnx(LoadRequest(model=model, onnx_path=Path(sys.argv[1])))()
else:
    from edgeinfer.model.precision.gate import session_callable
    keep = session_callable(Path(sys.argv[1]))
threads = sorted(set(os.listdir("/proc/self/task")) - before)
print(json.dumps({"mask": sorted(os.sched_getaffinity(0)),
                  "threads": [sorted(os.sched_getaffinity(int(t))) for t in threads]}))
"""


def _threads_of_session_on_one_cpu(tmp_path, how: str) -> dict:
    onnx_path = build_trivial_onnx(tmp_path / "trivial.onnx")
    cpu = sorted(os.sched_getaffinity(0))[0]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "daemon"), str(ROOT / "clients")]))
    out = subprocess.run([sys.executable, "-c", _CHILD, str(onnx_path), str(cpu), how], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_two_cpus
@pytest.mark.parametrize("how", ["loader", "gate"])
def test_session_threads_stay_inside_a_narrowed_cpu_mask(tmp_path, how):
    seen = _threads_of_session_on_one_cpu(tmp_path, how)
    assert len(seen["mask"]) == 1
    for cpus in seen["threads"]:
        assert set(cpus) <= set(seen["mask"]), f"an ORT thread may run on {cpus}, outside {seen['mask']}"


def test_intra_op_threads_follows_the_mask_only_where_it_is_narrower(monkeypatch):
    assert intra_op_threads(3) == 3  # the config's count always wins
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert intra_op_threads(0) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert intra_op_threads(0) == 0  # the whole machine: ORT's own default (one per physical core)
