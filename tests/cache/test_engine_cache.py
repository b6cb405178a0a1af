"""Engine cache: reuse, rebuild on every kind of damage, cross-process locking, unwritable
directories, deserialize failures. Real filesystem, real subprocesses; the TensorRT builder
and runtime are test doubles (build_fn / deserialize_fn)."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edgeinfer.cache import engines as ec
from edgeinfer.cache.engines import (DeserializeError, EngineCache, EngineUnusable, list_entries,
                                               load_engine, make_key, prune, verify)

ROOT = Path(__file__).resolve().parents[2]

FIELDS = {
    "schema": 1, "onnx_sha256": "ab" * 32, "trt_module": "tensorrt", "trt_version": "10.3.0",
    "gpu_name": "Orin", "compute_capability": "8.7", "cuda_driver": "12.6", "cuda_runtime": "12.6",
    "l4t_release": "36.4.3",
    "build": {"precision": "fp16", "profiles": [{"input": [[1, 3, 8, 8], [4, 3, 8, 8], [4, 3, 8, 8]]}],
              "workspace_mb": 512, "optimization_level": 3, "dla_core": -1},
}


class FakeBuilder:
    """build_fn double: counts calls, returns distinct bytes per call."""

    def __init__(self, payload: bytes = b"ENGINE"):
        self.calls = 0
        self.payload = payload

    def __call__(self) -> bytes:
        self.calls += 1
        return self.payload + f"#{self.calls}".encode() + b"x" * 1000


def test_second_start_reuses_the_engine(tmp_path):
    build = FakeBuilder()
    first = EngineCache(tmp_path).get_or_build(FIELDS, build, info={"model": "faces"})
    second = EngineCache(tmp_path).get_or_build(FIELDS, build)  # a new process would make a new cache object
    assert build.calls == 1
    assert not first.from_cache and second.from_cache
    assert second.data == first.data
    manifest = json.loads(second.path.with_suffix(".json").read_text())
    assert manifest["key"] == make_key(FIELDS) == second.path.stem
    assert manifest["key_fields"] == FIELDS
    assert manifest["engine"]["size"] == len(first.data)
    assert manifest["info"]["model"] == "faces"
    assert manifest["build_seconds"] >= 0 and manifest["created"]


@pytest.mark.parametrize("path, value", [
    (("onnx_sha256",), "cd" * 32),
    (("trt_version",), "10.4.0"),
    (("trt_module",), "tensorrt_rtx"),
    (("gpu_name",), "Orin Nano"),
    (("compute_capability",), "8.6"),
    (("cuda_driver",), "12.8"),
    (("cuda_runtime",), "12.8"),
    (("l4t_release",), "36.5.0"),
    (("build", "precision"), "int8"),
    (("build", "workspace_mb"), 256),
    (("build", "optimization_level"), 5),
    (("build", "dla_core"), 0),
    (("build", "profiles"), [{"input": [[1, 3, 8, 8], [8, 3, 8, 8], [8, 3, 8, 8]]}]),
])
def test_changing_any_key_field_rebuilds(tmp_path, path, value):
    build = FakeBuilder()
    cache = EngineCache(tmp_path)
    cache.get_or_build(FIELDS, build)
    changed = json.loads(json.dumps(FIELDS))
    target = changed
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    blob = cache.get_or_build(changed, build)
    assert build.calls == 2 and not blob.from_cache
    assert len(list_entries(tmp_path)) == 2


def _stored(tmp_path) -> tuple[EngineCache, FakeBuilder, Path]:
    cache, build = EngineCache(tmp_path), FakeBuilder()
    blob = cache.get_or_build(FIELDS, build)
    return cache, build, blob.path


def test_truncated_engine_is_rebuilt_with_the_reason(tmp_path, caplog):
    cache, build, path = _stored(tmp_path)
    full = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(100)
    with caplog.at_level(logging.WARNING):
        blob = cache.get_or_build(FIELDS, build)
    assert build.calls == 2 and not blob.from_cache
    assert f"truncated: 100 of {full} bytes" in blob.rebuild_reason
    assert "truncated" in caplog.text
    assert verify(tmp_path)[0][1] is True  # the rebuilt entry is whole again


def test_sha_mismatch_is_rebuilt(tmp_path, caplog):
    cache, build, path = _stored(tmp_path)
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF  # same size, different content: only the hash can tell
    path.write_bytes(bytes(data))
    entry, ok, reason = verify(tmp_path)[0]
    assert not ok and "sha256" in reason
    with caplog.at_level(logging.WARNING):
        blob = cache.get_or_build(FIELDS, build)
    assert build.calls == 2 and "does not match the manifest" in blob.rebuild_reason
    assert "rebuilding" in caplog.text


def test_missing_or_corrupt_manifest_is_rebuilt(tmp_path):
    cache, build, path = _stored(tmp_path)
    path.with_suffix(".json").write_text("{not json")
    blob = cache.get_or_build(FIELDS, build)
    assert build.calls == 2 and "not valid JSON" in blob.rebuild_reason
    path.with_suffix(".json").unlink()
    blob = cache.get_or_build(FIELDS, build)
    assert build.calls == 3 and blob.rebuild_reason == "manifest missing"


def test_unwritable_cache_dir_warns_and_still_returns_an_engine(tmp_path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    build = FakeBuilder()
    with caplog.at_level(logging.WARNING):
        blob = EngineCache(blocker / "cache").get_or_build(FIELDS, build)
    assert blob.data.startswith(b"ENGINE#1") and blob.path is None and not blob.from_cache
    assert "ENGINE CACHE NOT WRITABLE" in caplog.text
    assert str(blocker) in caplog.text


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_cache_dir_warns(tmp_path, caplog):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with caplog.at_level(logging.WARNING):
            blob = EngineCache(ro).get_or_build(FIELDS, FakeBuilder())
        assert blob.path is None and "ENGINE CACHE NOT WRITABLE" in caplog.text
    finally:
        ro.chmod(0o755)


def test_no_cache_dir_builds_in_memory(tmp_path):
    build = FakeBuilder()
    a = EngineCache(None).get_or_build(FIELDS, build)
    b = EngineCache(None).get_or_build(FIELDS, build)
    assert build.calls == 2 and a.path is None and not b.from_cache


def test_build_failure_propagates_and_leaves_no_entry(tmp_path):
    def failing():
        raise RuntimeError("unsupported op FancyOp")

    with pytest.raises(RuntimeError, match="FancyOp"):
        EngineCache(tmp_path).get_or_build(FIELDS, failing)
    assert list_entries(tmp_path) == []
    build = FakeBuilder()
    assert not EngineCache(tmp_path).get_or_build(FIELDS, build).from_cache and build.calls == 1


# -- deserialize step ------------------------------------------------------

def refusing_old(data: bytes) -> str:
    """deserialize_fn double: engines from the 'old TensorRT' fail like a version-tag mismatch."""
    if data.startswith(b"OLD"):
        raise DeserializeError("Serialization assertion stdVersionRead == kSERIALIZATION_VERSION failed."
                               " Version tag does not match")
    return "engine:" + data[:8].decode()


def test_deserialize_failure_triggers_a_rebuild(tmp_path, caplog):
    old = FakeBuilder(b"OLD")
    EngineCache(tmp_path).get_or_build(FIELDS, old)  # stored by a previous TensorRT
    new = FakeBuilder(b"NEW")
    with caplog.at_level(logging.WARNING):
        engine, blob = load_engine(EngineCache(tmp_path), FIELDS, new, refusing_old)
    assert engine == "engine:NEW#1xxx"
    assert new.calls == 1 and not blob.from_cache
    assert "Version tag does not match" in blob.rebuild_reason
    assert "Version tag does not match" in caplog.text
    # The rebuilt engine is what the next start loads.
    engine2, blob2 = load_engine(EngineCache(tmp_path), FIELDS, new, refusing_old)
    assert blob2.from_cache and new.calls == 1 and engine2 == engine


def test_fresh_engine_refused_is_recorded_and_not_rebuilt_again(tmp_path):
    build = FakeBuilder(b"X")

    def refuse(_data):
        raise DeserializeError("The engine cannot run on this GPU, which has compute capability 9.0")

    with pytest.raises(EngineUnusable, match="compute capability 9.0"):
        load_engine(EngineCache(tmp_path), FIELDS, build, refuse)
    manifest = list_entries(tmp_path)[0].manifest
    assert "compute capability 9.0" in manifest["runtime_error"]["reason"]
    with pytest.raises(EngineUnusable, match="not rebuilding"):
        load_engine(EngineCache(tmp_path), FIELDS, build, refuse)
    assert build.calls == 1
    # Once the runtime accepts it (e.g. after a fix that keeps the key), the mark goes away.
    load_engine(EngineCache(tmp_path), FIELDS, build, lambda d: "ok")
    assert list_entries(tmp_path)[0].manifest["runtime_error"] is None


# -- cross-process ---------------------------------------------------------

_WORKER = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, {daemon!r})
    from edgeinfer.cache.engines import EngineCache
    cache_dir, count_file, start_at = sys.argv[1], sys.argv[2], float(sys.argv[3])
    fields = json.loads(sys.argv[4])
    def slow_build():
        with open(count_file, "a") as f:
            f.write(f"{{os.getpid()}}\\n")
        time.sleep(1.0)
        return b"ENGINE-from-" + str(os.getpid()).encode()
    while time.time() < start_at:
        time.sleep(0.005)
    blob = EngineCache(cache_dir).get_or_build(fields, slow_build)
    print(json.dumps({{"data": blob.data.decode(), "from_cache": blob.from_cache,
                      "waited": blob.waited_for_other}}))
""")


def test_two_processes_build_once(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(daemon=str(ROOT / "daemon")))
    count = tmp_path / "builds.txt"
    start_at = time.time() + 1.5  # both are importing by then; they start together
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "cache"), str(count),
                               str(start_at), json.dumps(FIELDS)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=30)
        assert p.returncode == 0
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert len(count.read_text().split()) == 1, "the engine was built more than once"
    assert results[0]["data"] == results[1]["data"]
    assert sorted(r["from_cache"] for r in results) == [False, True]
    assert any(r["waited"] for r in results)  # the second one waited on the lock, then loaded


# -- CLI helpers -----------------------------------------------------------

def test_list_verify_prune(tmp_path):
    cache = EngineCache(tmp_path)
    keep_fields = FIELDS
    old_fields = {**FIELDS, "trt_version": "10.0.0"}
    broken_fields = {**FIELDS, "trt_version": "9.9.9"}
    for f in (keep_fields, old_fields, broken_fields):
        cache.get_or_build(f, FakeBuilder(), info={"model": "faces"})
    broken = cache.entry(make_key(broken_fields)).engine_path
    broken.write_bytes(b"short")
    entries = {e.key: e for e in list_entries(tmp_path)}
    assert set(entries) == {make_key(f) for f in (keep_fields, old_fields, broken_fields)}
    summary = entries[make_key(keep_fields)].summary()
    assert summary["model"] == "faces" and summary["tensorrt"] == "tensorrt 10.3.0" and summary["size"] > 0
    status = {e.key: (ok, reason) for e, ok, reason in verify(tmp_path)}
    assert status[make_key(keep_fields)] == (True, "ok")
    assert status[make_key(broken_fields)][0] is False and "truncated" in status[make_key(broken_fields)][1]

    # last used long ago -> pruned by age; the broken one goes as broken.
    old_engine = cache.entry(make_key(old_fields)).engine_path
    past = time.time() - 40 * 86400
    os.utime(old_engine, (past, past))
    would = prune(tmp_path, older_than=30 * 86400, dry_run=True)
    assert {e.key for e, _ in would} == {make_key(old_fields), make_key(broken_fields)}
    assert len(list_entries(tmp_path)) == 3  # dry run removed nothing
    removed = dict((e.key, why) for e, why in prune(tmp_path, older_than=30 * 86400))
    assert "unused for 40" in removed[make_key(old_fields)]
    assert removed[make_key(broken_fields)].startswith("broken:")
    assert [e.key for e in list_entries(tmp_path)] == [make_key(keep_fields)]
    # keep_keys: everything not listed goes.
    assert [e.key for e, _ in prune(tmp_path, keep_keys=[])] == [make_key(keep_fields)]
    assert list_entries(tmp_path) == []


def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "x.bin"
    ec.atomic_write(target, b"1" * 10)
    ec.atomic_write(target, b"2" * 5)
    assert target.read_bytes() == b"22222"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]
