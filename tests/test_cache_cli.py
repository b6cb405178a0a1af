"""`edgeinfer cache list|verify|prune` on a real cache directory (engines made by a builder double)."""
from __future__ import annotations

import json
import subprocess
import sys

from edgeinfer.backends.tensorrt.cache import EngineCache


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeinfer.cli", "cache", *args], capture_output=True, text=True)


def test_list_verify_prune(tmp_path):
    cache = EngineCache(tmp_path)
    good = cache.get_or_build({"onnx": "a" * 64, "gpu": "Orin"}, lambda: b"engine-one" * 100, info={"model": "faces"})
    bad = cache.get_or_build({"onnx": "b" * 64, "gpu": "Orin"}, lambda: b"engine-two" * 100, info={"model": "imagenet"})
    listed = json.loads(_run("list", "--dir", str(tmp_path), "--json").stdout)
    assert {e["model"] for e in listed} == {"faces", "imagenet"}
    assert {e["size"] for e in listed} == {1000}
    assert _run("verify", "--dir", str(tmp_path)).returncode == 0

    # Truncate one engine, as a power cut mid-copy would.
    bad.path.write_bytes(b"engine-two")
    res = _run("verify", "--dir", str(tmp_path))
    assert res.returncode == 1
    assert f"{bad.key[:12]}  BROKEN" in res.stdout and f"{good.key[:12]}  ok" in res.stdout

    dry = _run("prune", "--dir", str(tmp_path), "--dry-run")
    assert f"would remove {bad.key[:12]}" in dry.stdout and bad.path.exists()
    res = _run("prune", "--dir", str(tmp_path))
    assert f"removed {bad.key[:12]}" in res.stdout and good.key[:12] not in res.stdout
    assert not bad.path.exists() and good.path.exists()
    assert _run("verify", "--dir", str(tmp_path)).returncode == 0
