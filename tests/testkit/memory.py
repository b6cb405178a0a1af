"""Resident memory and thread/fd counts of this process (the in-process daemon's), from /proc."""
from __future__ import annotations

import os


def rss_mb(pid: str = "self") -> float:
    """VmRSS in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc status")


def threads(pid: str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def open_fds(pid: str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled_rss_mb() -> float:
    """This process's VmRSS in MB once garbage is collected and glibc has handed its free heap pages
    back (malloc_trim): what is left is memory something still holds (an ONNX Runtime arena, live
    objects), not the allocator's cache of freed blocks, which in a process as big as the test
    session's varies with whatever ran before."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the plain RSS
        pass
    return rss_mb()
