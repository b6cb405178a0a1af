"""`edgeinfer cache list|verify|prune` on a real cache directory (engines made by a builder double)."""
from __future__ import annotations

import json
import subprocess
import sys

from edgeinfer.cache.engines import EngineCache


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


def test_prune_removes_precision_variants_no_load_used(tmp_path, classifier_onnx):
    """A reused variant is stamped and kept; one unused for longer than --older-than-days goes,
    and so does an interrupted write's temp file; a dry run removes nothing."""
    import os
    import shutil
    import time

    from edgeinfer.config import parse_config
    from edgeinfer.model.precision.prepare import prepare_precision

    cfg = parse_config({"models": [{"name": "imagenet", "onnx": str(classifier_onnx),
                                    "input": {"size": [224, 224]}, "postprocess": {"task": "classification"}}]},
                       source="test").models[0]
    used = prepare_precision(cfg, "fp16", tmp_path).onnx_path
    ten_days_ago = time.time() - 10 * 86400
    os.utime(used, (ten_days_ago, ten_days_ago))
    assert prepare_precision(cfg, "fp16", tmp_path).onnx_path == used  # reused ...
    assert time.time() - used.stat().st_atime < 60                     # ... and stamped as used,
    assert used.stat().st_mtime == ten_days_ago                         # not rewritten
    stale = used.with_name("old-model.fp16.0123456789abcdef0123.onnx")
    shutil.copy(used, stale)
    leftover = used.with_name(f".{used.name}.abc.tmp")
    leftover.write_bytes(b"half")
    for p in (stale, leftover):
        os.utime(p, (ten_days_ago, ten_days_ago))

    dry = _run("prune", "--dir", str(tmp_path), "--older-than-days", "5", "--dry-run")
    assert f"would remove {stale.name}: unused for 10.0 days" in dry.stdout
    assert f"would remove {leftover.name}: left by an interrupted write" in dry.stdout
    assert stale.exists() and leftover.exists()
    res = _run("prune", "--dir", str(tmp_path), "--older-than-days", "5")
    assert "2 precision variant(s) removed" in res.stdout, res.stdout
    assert not stale.exists() and not leftover.exists() and used.exists()
