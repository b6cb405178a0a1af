"""Event loop choice: the daemon (`[server] event_loop`) and the benchmark's processes.

"asyncio" is the standard loop, "uvloop" the libuv one (pip install uvloop),
"auto" uvloop when it imports, else asyncio. The same choice is applied to
the daemon and to the echo server of a run, so their ratio stays fair.
"""
from __future__ import annotations

import asyncio
import sys
from typing import Awaitable, TypeVar

LOOP_KINDS = ("asyncio", "uvloop", "auto")
T = TypeVar("T")


def uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def resolve(kind: str) -> str:
    """The loop that `kind` means on this machine ("asyncio" or "uvloop").

    Raises:
        ValueError: unknown kind, or "uvloop" asked for but not installed.
    """
    if kind not in LOOP_KINDS:
        raise ValueError(f"event loop must be one of {LOOP_KINDS}, got {kind!r}")
    if kind == "auto":
        return "uvloop" if uvloop_available() else "asyncio"
    if kind == "uvloop" and not uvloop_available():
        raise ValueError("event loop 'uvloop' asked for, but uvloop is not installed (pip install uvloop)")
    return kind


def run(main: Awaitable[T], kind: str = "asyncio") -> T:
    """asyncio.run(main) on the chosen loop."""
    if resolve(kind) == "uvloop":
        import uvloop

        if sys.version_info >= (3, 11):
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main)
        uvloop.install()  # pragma: no cover - Python 3.10 (JetPack 6)
    return asyncio.run(main)
