"""The file primitives both caches rest on: an atomic write, an exclusive file lock, a content hash.

Engines and precision variants are written by daemons and by `edgeinfer build`,
possibly at once and possibly as different users, and a machine can lose power
mid-write: a reader must see the old file or the whole new one, never a part,
and two writers must build once.
"""
from __future__ import annotations

import contextlib
import hashlib
import fcntl
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional, Union


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, content: Union[bytes, Callable[[Path], None]]) -> None:
    """Put `content` at `path` so that a reader sees the old file or the whole new one.

    `content` is the bytes, or a function that writes the file it is given (e.g. onnx.save).
    A temporary file in the same folder is written, fsynced, made 0644 (readable by the daemon
    when another user ran `edgeinfer build`) and renamed over `path`; then the folder is fsynced.

    Raises:
        whatever writing raises (the temporary file is removed); OSError from the rename.
    """
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        if callable(content):
            os.close(fd)
            fd = -1
            content(tmp)
            fd = os.open(tmp, os.O_RDONLY)
        else:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


class FileLock:
    """Exclusive flock(2) on a lock file; `on_wait(holder_pid_text)` is called before blocking.

    flock locks belong to the open file description, so they also exclude other threads of
    this process that open the file themselves, and they vanish when a holder dies.
    """

    def __init__(self, path: Path, on_wait: Optional[Callable[[str], None]] = None, blocking: bool = True):
        self.path = path
        self.on_wait = on_wait
        self.blocking = blocking
        self.fd: Optional[int] = None

    def __enter__(self) -> "FileLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not self.blocking:
                    raise
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                if self.on_wait:
                    self.on_wait(holder)
                fcntl.flock(fd, fcntl.LOCK_EX)
            # Who holds it, for the next waiter's message.
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def file_sha256(path: Union[str, Path]) -> str:
    """Hex sha256 of a file's content (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
