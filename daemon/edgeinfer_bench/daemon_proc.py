"""The daemon under test, in its own process, started the way `edgeinfer serve` starts it.

The child builds `Daemon(config)` and runs it on a fresh event loop, exactly
as `cmd_serve` does, except that it listens on a free loopback port and tells
the parent the port and each model's state once loading has finished.
"""
from __future__ import annotations

import copy
import logging
import os
import signal
from typing import Optional

from edgeinfer.config import Config
from edgeinfer_bench.child import ChildServer, report_failure


async def _serve(conn, config: Config) -> None:
    import asyncio

    from edgeinfer.model.types import ModelState
    from edgeinfer.process.daemon import Daemon

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


def _supervise(conn, config: Config) -> None:
    """[server] processes > 1 or inference = "shared": the supervisor (process/supervisor.py) in this process, as `serve` runs it."""
    import threading

    from edgeinfer.listen import parse_listen
    from edgeinfer.process.supervisor import Supervisor

    loaded = threading.Event()
    states: dict = {}

    def on_loaded(s: dict) -> None:
        states.update(s)
        loaded.set()

    supervisor = Supervisor(config, on_loaded=on_loaded)
    listen = supervisor.start()

    def hello_then_wait() -> None:
        loaded.wait()
        conn.send(("ready", parse_listen(listen)[1], states, os.getpid()))
        try:
            conn.recv()
        except EOFError:
            pass
        supervisor.request_stop()

    threading.Thread(target=hello_then_wait, daemon=True).start()
    supervisor.run()


def _main(conn, config: Config, loop_kind: str, log_level: str) -> None:
    from edgeinfer.process.eventloop import run

    logging.basicConfig(level=getattr(logging, log_level.upper()),
                        format="%(asctime)s %(levelname)-7s daemon %(name)s: %(message)s")
    # The parent's Ctrl-C reaches the whole process group; the parent stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if config.server.supervised:
            config.server.event_loop = loop_kind
            _supervise(conn, config)
            return
        run(_serve(conn, config), loop_kind)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        report_failure(conn, exc)


class DaemonProcess(ChildServer):
    """Context manager: an edgeinfer daemon for `config` in a child process.

    Args:
        config: the daemon config; copied, its listen address replaced by a free
            loopback port, metrics turned off unless `metrics` is true (so
            benchmarks never fight over the metrics port).
        loop: "asyncio", "uvloop" or "auto" (see edgeinfer/eventloop.py).
        cpus: where it runs, its own children included (empty: anywhere).
    """

    def __init__(self, config: Config, loop: str = "asyncio", metrics: bool = False,
                 log_level: str = "warning", cpus: frozenset[int] = frozenset()):
        super().__init__(cpus)
        self.config = copy.deepcopy(config)
        self.config.server.listen = "127.0.0.1:0"
        if not metrics:
            self.config.metrics.enabled = False
        self.loop = loop
        self.log_level = log_level
        self.pid: Optional[int] = None
        self.model_states: dict[str, tuple[str, str, str]] = {}

    def start(self, timeout: float = 600.0) -> "DaemonProcess":
        """Start and wait until every model finished loading (ready or failed)."""
        msg = self._spawn(_main, (self.config, self.loop, self.log_level), "edgeinfer-bench-daemon", timeout,
                          "daemon did not finish loading", daemon=not self.config.server.supervised)
        if msg[0] != "ready":
            raise self._failed("daemon", msg[1])
        _, self.port, self.model_states, self.pid = msg
        return self

    def _stop_timeout(self) -> float:
        return self.config.server.grace_period_s + 10
