"""The daemon under test, in its own process, started the way `edgeinfer serve` starts it.

The child builds `Daemon(config)` and runs it on a fresh event loop, exactly
as `cmd_serve` does, except that it listens on a free loopback port and tells
the parent the port and each model's state once loading has finished.
"""
from __future__ import annotations

import copy
import logging
import multiprocessing as mp
import os
import signal
from typing import Optional

from ..config import Config


async def _serve(conn, config: Config) -> None:
    import asyncio

    from ..pipeline.model import ModelState
    from ..server.app import Daemon

    daemon = Daemon(config, tick_s=1.0)
    port = await daemon.start()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, daemon.registry.wait_loaded)
    states = {m.name: (m.state.value, m.state_reason,
                       m.runner.info.device if m.state is ModelState.READY and m.runner else "")
              for m in daemon.registry}
    conn.send(("ready", port, states, os.getpid()))

    def stop_on_parent() -> None:
        try:
            conn.recv()
        except EOFError:
            pass
        loop.call_soon_threadsafe(daemon.request_stop)

    loop.run_in_executor(None, stop_on_parent)
    await daemon.run()


def _main(conn, config: Config, loop_kind: str, log_level: str) -> None:
    from ..eventloop import run

    logging.basicConfig(level=getattr(logging, log_level.upper()),
                        format="%(asctime)s %(levelname)-7s daemon %(name)s: %(message)s")
    # The parent's Ctrl-C reaches the whole process group; the parent stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        run(_serve(conn, config), loop_kind)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass


class DaemonProcess:
    """Context manager: an edgeinfer daemon for `config` in a child process.

    Args:
        config: the daemon config; copied, its listen address replaced by a free
            loopback port, metrics turned off unless `metrics` is true (so
            benchmarks never fight over the metrics port).
        loop: "asyncio", "uvloop" or "auto" (see edgeinfer/eventloop.py).
    """

    def __init__(self, config: Config, loop: str = "asyncio", metrics: bool = False,
                 log_level: str = "warning"):
        self.config = copy.deepcopy(config)
        self.config.server.listen = "127.0.0.1:0"
        if not metrics:
            self.config.metrics.enabled = False
        self.loop = loop
        self.log_level = log_level
        self.port: Optional[int] = None
        self.pid: Optional[int] = None
        self.model_states: dict[str, tuple[str, str, str]] = {}
        self._proc = None
        self._conn = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 600.0) -> "DaemonProcess":
        """Start and wait until every model finished loading (ready or failed)."""
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_main, args=(child, self.config, self.loop, self.log_level),
                                 name="edgeinfer-bench-daemon", daemon=True)
        self._proc.start()
        self._conn = parent
        if not parent.poll(timeout):
            self.stop()
            raise RuntimeError(f"daemon did not finish loading within {timeout:.0f}s")
        msg = parent.recv()
        if msg[0] != "ready":
            self.stop()
            raise RuntimeError(f"daemon failed to start: {msg[1]}")
        _, self.port, self.model_states, self.pid = msg
        return self

    def stop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.send("stop")
            except OSError:
                pass
        if self._proc is not None:
            self._proc.join(self.config.server.grace_period_s + 10)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(5)
        self._proc = self._conn = None

    def __enter__(self) -> "DaemonProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
