"""gpu_bench.py --old-tree: a daemon served by another source tree's code, for old-against-new runs
interleaved in one bench call (scripts/device/serve_from_tree.py)."""
from __future__ import annotations

import copy
import os
import subprocess
import time
from pathlib import Path

import pytest

from edgeinfer_client import Client

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_bench(load_script):
    return load_script("scripts/gpu_bench.py")


def test_a_daemon_from_another_tree_serves_its_code_and_stops(gpu_bench, dev_config, tmp_path, monkeypatch):
    """The tree is a `git archive` of HEAD's daemon and clients, its edgeinfer package marked so that
    importing it leaves a trace: the daemon's processes import edgeinfer from there, the model
    answers, and the daemon stops when the context ends."""
    from edgeinfer.bench.trivial import build_trivial_onnx, trivial_model_config

    tree = tmp_path / "tree"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD", "daemon", "clients"],
                             capture_output=True, check=False)
    if archive.returncode != 0:
        pytest.skip(f"not a git checkout: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    init = tree / "daemon" / "edgeinfer" / "__init__.py"
    init.write_text(init.read_text() + "\nimport os as _os\n"
                    "with open(_os.environ['EDGEINFER_TREE_MARK'], 'a') as _f:\n"
                    "    _f.write(f'{_os.getpid()} {__file__}\\n')\n")
    mark = tmp_path / "imports.txt"
    monkeypatch.setenv("EDGEINFER_TREE_MARK", str(mark))

    cfg = copy.deepcopy(dev_config)
    cfg.cache.dir = str(tmp_path / "cache")
    cfg.models = [trivial_model_config(build_trivial_onnx(tmp_path / "trivial.onnx"))]
    with gpu_bench.daemon_from_tree(tree, cfg, "asyncio", tmp_path / "work") as (address, pid):
        with Client(address, timeout=30) as c:
            assert c.get_model("trivial").state == "ready"
        imports = dict(line.split(" ", 1) for line in mark.read_text().splitlines())
        assert imports.get(str(pid)) == str(init)  # the serving process runs the tree's code
        os.kill(pid, 0)  # alive while the context lasts
    end = time.monotonic() + 30
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"daemon pid {pid} still running after the context ended")
