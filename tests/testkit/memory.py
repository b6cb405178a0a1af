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
