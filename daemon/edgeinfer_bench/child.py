"""A server the benchmark runs in a spawned child process, driven over a pipe.

The child sends one hello message once it is up (or an error), and ends when
it reads "stop". Used by the daemon under test and the bare echo server, so
both are started and stopped the same way.
"""
from __future__ import annotations

import multiprocessing as mp
from typing import Any, Callable, Optional

from edgeinfer_bench.placement import started_on


def report_failure(conn, exc: BaseException) -> None:
    """From the child: tell the parent why it failed (it may be gone already)."""
    try:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    except OSError:
        pass


class ChildServer:
    """Base of DaemonProcess and EchoServer: spawn, wait for the hello, stop.

    `cpus`: the CPUs the child (and any process it starts) runs on; empty: anywhere (bench/placement.py).
    """

    def __init__(self, cpus: frozenset[int] = frozenset()) -> None:
        self.cpus = cpus
        self.port: Optional[int] = None
        self._proc = None
        self._conn = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _spawn(self, target: Callable, args: tuple, name: str, timeout: float, waiting_for: str,
               daemon: bool = True) -> Any:
        """Start `target(conn, *args)` and return its hello message.

        daemon=False for a child that starts processes of its own (Python forbids
        that to daemonic ones); it still ends when our end of the pipe closes.

        Raises:
            RuntimeError: no hello within `timeout` (the child is stopped first).
        """
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=target, args=(child, *args), name=name, daemon=daemon)
        with started_on(self.cpus):
            self._proc.start()
        self._conn = parent
        if not parent.poll(timeout):
            self.stop()
            raise RuntimeError(f"{waiting_for} within {timeout:.0f}s")
        return parent.recv()

    def _failed(self, what: str, detail: Any) -> RuntimeError:
        self.stop()
        return RuntimeError(f"{what} failed to start: {detail}")

    def _stop_timeout(self) -> float:
        return 5.0

    def stop(self) -> None:
        """Ask the child to stop; terminate it if it does not within the timeout."""
        if self._conn is not None:
            try:
                self._conn.send("stop")
            except OSError:
                pass
        if self._proc is not None:
            self._proc.join(self._stop_timeout())
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(5)
        self._proc = self._conn = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
