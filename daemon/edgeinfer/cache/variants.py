"""The variant cache: transformed ONNX files under `<cache_dir>/onnx/`, reused across starts.

A variant's key is the sha256 of everything its bytes depend on: the source
ONNX bytes, the precision, the transform settings, the transform code's
version and the onnx/onnxruntime versions doing the work, and for INT8 the
calibration data hash. Same key = same file, so a restart reuses it without
re-calibrating; any change makes a new file. Old ones stay until
`edgeinfer cache prune --older-than-days N` removes the variants no load has
used for that long: each reuse stamps the file's access time (its
modification time stays when it was written).

Files are written to a temporary name in the same folder and renamed into
place, so a crash or a second process never leaves a half-written variant
under a valid name. A cache folder that cannot be written is reported (it
would otherwise mean a silent re-transform on every start) and a per-user
temporary folder is used for this run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

# Bump when a change in this package changes the bytes of a variant.
TRANSFORM_VERSION = 1


def _library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def variant_key(source_sha256: str, precision: str, settings: object,
                calibration_hash: Optional[str]) -> str:
    """sha256 hex key of one variant (`settings` is a dataclass)."""
    payload = {
        "transform_version": TRANSFORM_VERSION,
        "source_sha256": source_sha256,
        "precision": precision,
        "settings": dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else settings,
        "calibration": calibration_hash,
        "libraries": _library_versions(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def variant_dir(cache_dir: Path) -> Path:
    """`<cache_dir>/onnx`, created; a private temporary folder when that is not writable."""
    wanted = Path(cache_dir) / "onnx"
    try:
        wanted.mkdir(parents=True, exist_ok=True)
        # mkdir succeeds on an existing read-only folder: probe a real write.
        with tempfile.NamedTemporaryFile(dir=wanted, prefix=".probe-"):
            pass
        return wanted
    except OSError as exc:
        fallback = Path(tempfile.gettempdir()) / f"edgeinfer-{os.getuid()}" / "onnx"
        fallback.mkdir(parents=True, exist_ok=True)
        log.warning("variant cache %s is not writable (%s): using %s for this run; "
                    "transformed models will be rebuilt after a reboot", wanted,
                    exc.strerror or exc, fallback)
        return fallback


def variant_path(folder: Path, source: Path, precision: str, key: str) -> Path:
    # The readable prefix is for operators; the key alone decides identity.
    return folder / f"{Path(source).stem}.{precision}.{key[:20]}.onnx"


def touch_variant(path: Path) -> None:
    """Stamp a reused variant's access time (set explicitly: mounts with noatime would not),
    so prune_variants keeps what is in use; the modification time keeps saying when it was written."""
    try:
        os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns))  # ns: the mtime stays exact
    except OSError:  # a read-only cache: the variant is still good, only its age is not kept
        pass


def prune_variants(cache_dir: Path, older_than_s: Optional[float], dry_run: bool = False) -> list[tuple[Path, str]]:
    """Remove variants unused for `older_than_s` seconds and temporary files of crashed writers.

    Returns (path, why) per file removed (or that would be, with dry_run). With
    `older_than_s` None only the crashed writers' leftovers (older than an hour) go.
    """
    folder = Path(cache_dir) / "onnx"
    if not folder.is_dir():
        return []
    now = time.time()
    removed: list[tuple[Path, str]] = []
    for path in sorted(folder.iterdir()):
        try:
            st = path.stat()
        except OSError:
            continue
        age = now - max(st.st_atime, st.st_mtime)  # last used, or written
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            why = "left by an interrupted write" if age > 3600 else None
        elif path.suffix == ".onnx" and older_than_s is not None and age > older_than_s:
            why = f"unused for {age / 86400:.1f} days"
        else:
            why = None
        if why is None:
            continue
        if not dry_run:
            try:
                path.unlink()
            except OSError as exc:
                log.warning("cannot remove %s: %s", path, exc.strerror or exc)
                continue
        removed.append((path, why))
    return removed
