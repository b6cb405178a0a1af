"""The engine cache: serialized TensorRT engines keyed by everything that shapes them.

Layout under the configured cache directory::

    engines/<key>.engine   the serialized engine (plan)
    engines/<key>.json     manifest: every key field, the engine's sha256/size, build time, date
    engines/<key>.lock     flock(2) target, so several daemons sharing the cache build once
    timing/<platform>.cache  TensorRT timing caches, one per platform (see builder.py)

The key is the sha256 of the canonical JSON of the key fields (ONNX hash, TensorRT module
and version, GPU and compute capability, CUDA driver/runtime, L4T release, every build
setting), so an upgrade or a config change picks a new key instead of loading a stale engine.

The cache never knows what TensorRT is: it stores bytes that a `build_fn` returns, and
`load_engine` hands them to a `deserialize_fn`. Both are injected, which is what lets the
tests drive every path (reuse, rebuild, corruption, concurrency) with test doubles.

Failure policy (each one is logged with its reason, none stops serving):
- corrupt, truncated or sha-mismatched entry -> rebuilt;
- cached engine that the runtime refuses to deserialize ("version tag") -> rebuilt once;
  if the fresh build is refused too, the refusal is recorded in the manifest and raised
  as EngineUnusable (the next start then does not rebuild again for nothing);
- unwritable cache directory -> a loud warning, the engine is built in memory.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar, Union

from edgeinfer.cache.files import FileLock, atomic_write

log = logging.getLogger(__name__)

FORMAT = 1
ENGINES = "engines"
TIMING = "timing"
_TMP_MAX_AGE_S = 3600.0

T = TypeVar("T")


class DeserializeError(Exception):
    """Raised by a deserialize_fn: the runtime refused these bytes (message = its reason)."""


class EngineUnusable(Exception):
    """A freshly built engine cannot be deserialized here (e.g. unsupported GPU)."""


# --------------------------------------------------------------------------
# Keys, files
# --------------------------------------------------------------------------

def canonical_json(fields: Mapping[str, Any]) -> str:
    """Stable JSON: sorted keys, no whitespace. Raises TypeError for non-JSON values."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), allow_nan=False)


def make_key(key_fields: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of `key_fields`."""
    return hashlib.sha256(canonical_json(key_fields).encode()).hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------
# Entries
# --------------------------------------------------------------------------

@dataclass
class CacheEntry:
    """One engine in the cache (possibly broken: a file may be missing)."""

    key: str
    engine_path: Path
    manifest_path: Path
    manifest: Optional[dict] = None
    manifest_error: Optional[str] = None

    @property
    def info(self) -> dict:
        return (self.manifest or {}).get("info", {})

    @property
    def model(self) -> Optional[str]:
        return self.info.get("model")

    @property
    def size(self) -> Optional[int]:
        return (self.manifest or {}).get("engine", {}).get("size")

    @property
    def created(self) -> Optional[str]:
        return (self.manifest or {}).get("created")

    @property
    def last_used(self) -> Optional[float]:
        """Unix time the engine was last loaded (its mtime; touched on every cache hit)."""
        try:
            return self.engine_path.stat().st_mtime
        except OSError:
            return None

    def summary(self) -> dict:
        """Flat dict for `edgeinfer cache list` (JSON-serializable)."""
        m = self.manifest or {}
        kf = m.get("key_fields", {})
        last = self.last_used
        return {
            "key": self.key,
            "model": self.model,
            "precision": kf.get("build", {}).get("precision"),
            "tensorrt": f"{kf.get('trt_module', '?')} {kf.get('trt_version', '?')}",
            "gpu": f"{kf.get('gpu_name', '?')} (sm {kf.get('compute_capability', '?')})",
            "size": self.size,
            "build_seconds": m.get("build_seconds"),
            "created": self.created,
            "last_used": _dt.datetime.fromtimestamp(last, _dt.timezone.utc).isoformat(timespec="seconds")
            if last else None,
            "runtime_error": (m.get("runtime_error") or {}).get("reason"),
            "engine_path": str(self.engine_path),
        }


def _read_manifest(path: Path) -> tuple[Optional[dict], Optional[str]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None, "manifest missing"
    except OSError as exc:
        return None, f"manifest unreadable: {exc.strerror or exc}"
    try:
        data = json.loads(text)
    except ValueError as exc:
        return None, f"manifest is not valid JSON: {exc}"
    if not isinstance(data, dict):
        return None, "manifest is not a JSON object"
    return data, None


def check_entry(entry: CacheEntry, data: Optional[bytes] = None) -> tuple[bool, str, Optional[bytes]]:
    """Validate one entry. Returns (ok, reason, engine bytes when ok).

    Checks: manifest present and parseable, same format, key fields hash to the file's key,
    engine present, full size, sha256 equal to the manifest's.
    """
    if entry.manifest is None:
        return False, entry.manifest_error or "manifest missing", None
    m = entry.manifest
    if m.get("format") != FORMAT:
        return False, f"manifest format {m.get('format')!r}, this edgeinfer writes {FORMAT}", None
    try:
        if make_key(m["key_fields"]) != entry.key:
            return False, "manifest key fields do not hash to the entry's key", None
        want_sha, want_size = m["engine"]["sha256"], int(m["engine"]["size"])
    except (KeyError, TypeError, ValueError) as exc:
        return False, f"manifest incomplete ({exc})", None
    if data is None:
        try:
            data = entry.engine_path.read_bytes()
        except FileNotFoundError:
            return False, "engine file missing", None
        except OSError as exc:
            return False, f"engine file unreadable: {exc.strerror or exc}", None
    if len(data) < want_size:
        return False, f"engine truncated: {len(data)} of {want_size} bytes", None
    if len(data) != want_size:
        return False, f"engine is {len(data)} bytes, the manifest says {want_size}", None
    got = sha256_bytes(data)
    if got != want_sha:
        return False, f"engine sha256 {got[:12]}... does not match the manifest's {want_sha[:12]}...", None
    return True, "ok", data


@dataclass
class EngineBlob:
    """Engine bytes and where they came from."""

    data: bytes
    key: str
    from_cache: bool
    path: Optional[Path] = None        # None: built in memory, not stored
    manifest: Optional[dict] = None
    rebuild_reason: Optional[str] = None  # why an existing entry was not used
    build_seconds: Optional[float] = None
    waited_for_other: bool = False     # another process built it while we waited


# --------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------

class EngineCache:
    """Engine cache in `cache_dir` (None = no cache: every engine is built in memory).

    Args:
        cache_dir: the configured cache directory.
        progress: called with short human text (waiting for a lock, cache hit, rebuild reason).
    """

    def __init__(self, cache_dir: Optional[Union[str, Path]], progress: Callable[[str], None] = lambda _m: None):
        self.root = Path(cache_dir) if cache_dir else None
        self.progress = progress

    # -- paths ----------------------------------------------------------
    @property
    def engines_dir(self) -> Optional[Path]:
        return self.root / ENGINES if self.root else None

    def entry(self, key: str) -> CacheEntry:
        d = self.engines_dir
        assert d is not None
        manifest, err = _read_manifest(d / f"{key}.json")
        return CacheEntry(key, d / f"{key}.engine", d / f"{key}.json", manifest, err)

    def _ensure_dir(self, sub: str) -> Optional[Path]:
        """Create root/sub; None (after one loud warning) when that is impossible."""
        if self.root is None:
            return None
        path = self.root / sub
        try:
            path.mkdir(parents=True, exist_ok=True)
            if not os.access(path, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "not writable", str(path))
        except OSError as exc:
            self._warn_unwritable(path, exc)
            return None
        return path

    def _warn_unwritable(self, path: Path, exc: BaseException) -> None:
        msg = (f"ENGINE CACHE NOT WRITABLE: {path}: {getattr(exc, 'strerror', None) or exc}. "
               f"Engines are built in memory and rebuilt on every start until this is fixed "
               f"(check [cache] dir and the service user's permissions).")
        log.warning(msg)
        self.progress(msg)

    # -- reading --------------------------------------------------------
    def _read_valid(self, key: str) -> tuple[Optional[bytes], Optional[dict], Optional[str]]:
        """(bytes, manifest, None) for a good entry; (None, manifest, reason) for a bad one;
        (None, None, None) when there is no entry at all."""
        d = self.engines_dir
        if d is None:
            return None, None, None
        entry = self.entry(key)
        if entry.manifest is None and not entry.engine_path.exists():
            if entry.manifest_error and entry.manifest_error != "manifest missing":
                return None, None, entry.manifest_error
            return None, None, None
        ok, reason, data = check_entry(entry)
        return (data, entry.manifest, None) if ok else (None, entry.manifest, reason)

    def _touch(self, key: str) -> None:
        # mtime = last use, for `prune(older_than=...)`; a read-only cache just skips it.
        with contextlib.suppress(OSError):
            os.utime(self.entry(key).engine_path)

    # -- the main entry point -------------------------------------------
    def get_or_build(self, key_fields: Mapping[str, Any], build_fn: Callable[[], bytes],
                     info: Optional[Mapping[str, Any]] = None) -> EngineBlob:
        """Return the cached engine for `key_fields`, building and storing it if needed.

        Two processes asking for the same key: one builds (holding the key's lock), the other
        waits and then reads the stored engine. Exceptions from `build_fn` propagate.

        Args:
            key_fields: JSON-serializable dict; its canonical hash is the key.
            build_fn: returns the serialized engine.
            info: extra JSON stored in the manifest, not part of the key (model name, paths).
        """
        key = make_key(key_fields)
        data, manifest, reason = self._read_valid(key)
        if data is not None:
            self._touch(key)
            self.progress(f"engine cache hit {key[:12]}")
            return EngineBlob(data, key, True, self.entry(key).engine_path, manifest)
        if self.root is None:
            log.info("no cache directory configured: building the engine in memory")
            return self._build_in_memory(key, build_fn, reason)
        engines = self._ensure_dir(ENGINES)
        if engines is None:
            return self._build_in_memory(key, build_fn, reason)
        waited = []

        def on_wait(holder: str) -> None:
            waited.append(holder)
            msg = f"waiting for process {holder} that is building engine {key[:12]}"
            log.info(msg)
            self.progress(msg)

        try:
            lock = FileLock(engines / f"{key}.lock", on_wait)
            lock.__enter__()
        except OSError as exc:
            self._warn_unwritable(engines, exc)
            return self._build_in_memory(key, build_fn, reason)
        try:
            data, manifest, reason2 = self._read_valid(key)
            if data is not None:  # built by the process we waited for
                self._touch(key)
                self.progress(f"engine cache hit {key[:12]} (built by another process)")
                return EngineBlob(data, key, True, self.entry(key).engine_path, manifest, waited_for_other=bool(waited))
            reason = reason2 or reason
            if reason:
                log.warning("engine cache entry %s is unusable (%s); rebuilding", key[:12], reason)
                self.progress(f"rebuilding engine: cached entry unusable ({reason})")
            start = time.monotonic()
            data = build_fn()
            seconds = time.monotonic() - start
            try:
                manifest = self._store(key, key_fields, data, seconds, info)
            except OSError as exc:
                self._warn_unwritable(engines, exc)
                return EngineBlob(data, key, False, None, None, reason, seconds)
            return EngineBlob(data, key, False, self.entry(key).engine_path, manifest, reason, seconds)
        finally:
            lock.__exit__(None, None, None)

    def _build_in_memory(self, key: str, build_fn: Callable[[], bytes], reason: Optional[str]) -> EngineBlob:
        start = time.monotonic()
        data = build_fn()
        return EngineBlob(data, key, False, None, None, reason, time.monotonic() - start)

    def _store(self, key: str, key_fields: Mapping[str, Any], data: bytes, seconds: float,
               info: Optional[Mapping[str, Any]]) -> dict:
        """Write engine then manifest (a crash in between leaves an entry without manifest,
        which reads as invalid and is rebuilt)."""
        entry = self.entry(key)
        manifest = {
            "format": FORMAT,
            "key": key,
            "key_fields": json.loads(canonical_json(key_fields)),
            "engine": {"file": entry.engine_path.name, "sha256": sha256_bytes(data), "size": len(data)},
            "build_seconds": round(seconds, 3),
            "created": _now_iso(),
            "created_by_pid": os.getpid(),
            "info": dict(info or {}),
            "runtime_error": None,
        }
        atomic_write(entry.engine_path, data)
        atomic_write(entry.manifest_path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
        log.info("engine %s stored (%d bytes, built in %.1f s)", key[:12], len(data), seconds)
        return manifest

    # -- maintenance used by load_engine ----------------------------------
    def invalidate(self, key: str, reason: str, expected_sha: Optional[str] = None) -> bool:
        """Remove an entry, under its lock. With `expected_sha`, only if the stored engine is
        still that one (another process may have replaced it with a good build meanwhile)."""
        engines = self.engines_dir
        if engines is None:
            return False
        try:
            with FileLock(engines / f"{key}.lock"):
                entry = self.entry(key)
                if expected_sha and (entry.manifest or {}).get("engine", {}).get("sha256") != expected_sha:
                    return False
                for p in (entry.manifest_path, entry.engine_path):
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
                log.warning("engine cache entry %s removed: %s", key[:12], reason)
                return True
        except OSError as exc:
            log.warning("could not remove engine cache entry %s (%s): %s", key[:12], reason, exc)
            return False

    def set_runtime_error(self, key: str, reason: Optional[str]) -> None:
        """Record (or clear, with None) that this engine, freshly built, was refused here."""
        engines = self.engines_dir
        if engines is None:
            return
        try:
            with FileLock(engines / f"{key}.lock"):
                entry = self.entry(key)
                if entry.manifest is None:
                    return
                entry.manifest["runtime_error"] = {"reason": reason, "at": _now_iso()} if reason else None
                atomic_write(entry.manifest_path,
                             (json.dumps(entry.manifest, indent=2, sort_keys=True) + "\n").encode())
        except OSError as exc:
            log.warning("could not update engine cache manifest %s: %s", key[:12], exc)

    # -- timing caches ----------------------------------------------------
    def timing_cache_path(self, name: str) -> Optional[Path]:
        """Path of the timing cache called `name` (a platform slug), or None without a usable dir."""
        d = self._ensure_dir(TIMING)
        return d / f"{name}.cache" if d is not None else None

    @staticmethod
    def update_file(path: Path, merge: Callable[[Optional[bytes]], Optional[bytes]]) -> bool:
        """Read-merge-write `path` under its lock: merge(current bytes or None) -> new bytes.

        Returns False (after a warning) when the file cannot be written.
        """
        try:
            with FileLock(path.with_name(path.name + ".lock")):
                try:
                    current: Optional[bytes] = path.read_bytes()
                except FileNotFoundError:
                    current = None
                new = merge(current)
                if new is not None:
                    atomic_write(path, new)
            return True
        except OSError as exc:
            log.warning("could not write %s: %s", path, exc)
            return False


# --------------------------------------------------------------------------
# Build-or-load with the deserialize step
# --------------------------------------------------------------------------

def load_engine(cache: EngineCache, key_fields: Mapping[str, Any], build_fn: Callable[[], bytes],
                deserialize_fn: Callable[[bytes], T], info: Optional[Mapping[str, Any]] = None
                ) -> tuple[T, EngineBlob]:
    """get_or_build, then deserialize; a cached engine that does not deserialize is rebuilt once.

    Raises:
        EngineUnusable: a freshly built engine was refused by the runtime (message = its reason).
        Whatever build_fn raises.
    """
    blob = cache.get_or_build(key_fields, build_fn, info)
    try:
        engine = deserialize_fn(blob.data)
    except DeserializeError as exc:
        if not blob.from_cache:
            cache.set_runtime_error(blob.key, str(exc))
            raise EngineUnusable(str(exc)) from exc
        marker = (blob.manifest or {}).get("runtime_error")
        if marker:
            # Same key = same GPU, driver and TensorRT: a rebuild would be refused again.
            raise EngineUnusable(f"{exc} (a fresh build was refused the same way on "
                                 f"{marker.get('at', '?')}; not rebuilding)") from exc
        reason = f"cached engine failed to deserialize: {exc}"
        log.warning("engine %s: %s; rebuilding", blob.key[:12], reason)
        cache.progress(f"rebuilding engine: {reason}")
        cache.invalidate(blob.key, reason, expected_sha=(blob.manifest or {}).get("engine", {}).get("sha256"))
        blob = cache.get_or_build(key_fields, build_fn, info)
        blob.rebuild_reason = blob.rebuild_reason or reason
        try:
            engine = deserialize_fn(blob.data)
        except DeserializeError as exc2:
            cache.set_runtime_error(blob.key, str(exc2))
            raise EngineUnusable(str(exc2)) from exc2
    else:
        if (blob.manifest or {}).get("runtime_error"):
            cache.set_runtime_error(blob.key, None)
    return engine, blob


# --------------------------------------------------------------------------
# CLI helpers: return data, print nothing
# --------------------------------------------------------------------------

def _keys_in(engines: Path) -> list[str]:
    keys = set()
    try:
        names = os.listdir(engines)
    except FileNotFoundError:
        return []
    for name in names:
        if name.startswith("."):
            continue
        stem, dot, ext = name.rpartition(".")
        if dot and ext in ("engine", "json"):
            keys.add(stem)
    return sorted(keys)


def list_entries(cache_dir: Union[str, Path]) -> list[CacheEntry]:
    """Every entry in the cache (engines and/or manifests), sorted by key. Nothing is hashed."""
    cache = EngineCache(cache_dir)
    engines = cache.engines_dir
    return [cache.entry(k) for k in _keys_in(engines)] if engines else []


def verify(cache_dir: Union[str, Path]) -> list[tuple[CacheEntry, bool, str]]:
    """(entry, ok, reason) for every entry: manifest, key, size and sha256 are checked."""
    out = []
    for entry in list_entries(cache_dir):
        ok, reason, _ = check_entry(entry)
        out.append((entry, ok, reason))
    return out


def prune(cache_dir: Union[str, Path], keep_keys: Optional[Sequence[str]] = None,
          older_than: Union[None, float, _dt.timedelta] = None, remove_broken: bool = True,
          dry_run: bool = False) -> list[tuple[CacheEntry, str]]:
    """Remove entries; returns (entry, why) for each one removed (or that would be, with dry_run).

    An entry is removed when any applies:
    - `keep_keys` is given and the key is not in it (e.g. the keys the current config needs),
    - `older_than` (seconds or timedelta) is given and it was last used longer ago than that,
    - `remove_broken` and it fails verification.
    Entries being built (lock held) are skipped. Stale temp files of crashed writers go too.
    Lock files are kept: deleting one while a process waits on it would let two builders in.
    """
    if isinstance(older_than, _dt.timedelta):
        older_than = older_than.total_seconds()
    keep = set(keep_keys) if keep_keys is not None else None
    now = time.time()
    removed: list[tuple[CacheEntry, str]] = []
    cache = EngineCache(cache_dir)
    engines = cache.engines_dir
    if engines is None or not engines.is_dir():
        return removed
    for entry in list_entries(cache_dir):
        why = None
        if keep is not None and entry.key not in keep:
            why = "not needed by the current configuration"
        elif older_than is not None:
            last = entry.last_used or (entry.manifest_path.stat().st_mtime if entry.manifest_path.exists() else 0)
            if now - last > older_than:
                why = f"unused for {(now - last) / 86400:.1f} days"
        if why is None and remove_broken:
            ok, reason, _ = check_entry(entry)
            if not ok:
                why = f"broken: {reason}"
        if why is None:
            continue
        if dry_run:
            removed.append((entry, why))
            continue
        try:
            with FileLock(engines / f"{entry.key}.lock", blocking=False):
                for p in (entry.manifest_path, entry.engine_path):
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
            removed.append((entry, why))
        except BlockingIOError:
            log.info("engine %s is being built by another process; not pruned", entry.key[:12])
    for name in os.listdir(engines):
        if name.startswith(".") and name.endswith(".tmp"):  # left by an interrupted atomic_write
            p = engines / name
            with contextlib.suppress(OSError):
                if now - p.stat().st_mtime > _TMP_MAX_AGE_S and not dry_run:
                    p.unlink()
    return removed
