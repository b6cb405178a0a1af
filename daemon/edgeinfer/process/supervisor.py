"""[server] processes > 1: that many daemons on one TCP port, and one supervisor.

Why: one Python process serves at most what its GIL allows. On an H200 with
ResNet-50 a single daemon topped out near 1,300 img/s using about 4 of 16
cores, whatever its worker count, while the GPU had room to spare: the event
loop's gRPC work, preprocessing and the batch slots all take turns on one GIL.
Processes each have their own.

How: each child is a whole `Daemon` (its own models, batcher, worker pool and
metrics endpoint, on the metrics port + its index), bound to the same address
with SO_REUSEPORT, so the kernel spreads incoming connections over them. The
kernel balances connections, not requests: a client on one channel stays with
one process; many clients (kiosks, cameras) spread out, and one client that
wants every process opens several channels. Overall health ("" and the
service name) answers SERVING only once every child has loaded, whichever
child a check reaches; per-model health names answer for the child reached.

The supervisor holds no model. It checks that the port is free before
starting (with SO_REUSEPORT on, a second edgeinfer would otherwise share the
port silently), tells systemd READY once every child listens, feeds the
watchdog only while every child's own health tick keeps coming, and when a
child dies it stops the rest and exits non-zero, so systemd's Restart=
brings the whole service back (a half-sized service would look healthy).
Children drop NOTIFY_SOCKET (systemd accepts the main PID only) and stop on
their own if the supervisor disappears.

Reload (SIGHUP to the supervisor, e.g. `systemctl reload`): the supervisor
tells systemd RELOADING=1, forwards SIGHUP to every front-end child, each
re-reads the config file and applies it to its own models, and once all of
them reported READY=1 follows. Admin.Reload on a child answers
FAILED_PRECONDITION: one child alone would serve another config than its
siblings. The shared inference host does not reload its models (a reload
that changes them reports them as needing a restart).

With `[server] inference = "shared"` the children are front-ends without
models of their own, and one more child, the inference host
(edgeinfer/serving/shared), loads and runs the models for all of them over
links the supervisor creates (one socketpair per front-end). The host
is watched like the others (ticks, death stops all) and is stopped last, once
the front-ends have drained their requests through it.
"""
from __future__ import annotations

import copy
import logging
import multiprocessing as mp
import os
import queue
import secrets
import shutil
import signal
import tempfile
import time
from typing import Callable, Optional

from edgeinfer.process import signals, systemd
from edgeinfer.config import Config
from edgeinfer.listen import claim_listen, join_listen, parse_listen
from edgeinfer.process.child import prepare_child
from edgeinfer.rpc.stream_peers import StreamPeers

log = logging.getLogger(__name__)

# A child whose health tick has not arrived for this many ticks stops the watchdog feed.
STALE_TICKS = 5


def child_config(config: Config, index: int, listen: str) -> Config:
    """Process `index`'s config: the shared listen address, its own metrics port (port + index)."""
    c = copy.deepcopy(config)
    c.server.listen = listen
    c.server.processes = 1
    if c.metrics.enabled and index:
        host, port = parse_listen(c.metrics.listen)
        if port:
            c.metrics.listen = join_listen(host, port + index)
    return c


HOST_NAME = "edgeinfer-inference"


def _child(config: Config, index: int, events, all_loaded, loop_kind: str, log_level: int,
           links=None, config_path: Optional[str] = None, listen: str = "", stream_peers=None) -> None:
    """Body of child `index`: a Daemon on the shared port, reporting to the supervisor.

    links: with shared inference, this front-end's connections to the inference host.
    stream_peers: with [[streams]], which of them this child pulls (rpc/stream_peers.py)."""
    import asyncio

    from edgeinfer.process.eventloop import run
    from edgeinfer.process.daemon import Daemon

    prepare_child(str(index), log_level)
    parent = os.getppid()

    async def serve() -> None:
        daemon: Optional[Daemon] = None

        def tick() -> None:
            if os.getppid() != parent:  # the supervisor is gone: nobody would stop us
                log.error("supervisor %d is gone; stopping", parent)
                daemon.request_stop()
                return
            events.put(("tick", index, None))

        remote = None
        if links is not None:
            from edgeinfer.serving.shared.remote import RemoteModels

            remote = RemoteModels(links)
        def reloaded(outcome) -> None:
            events.put(("reloaded", index, outcome.summary()))

        daemon = Daemon(config, tick_s=1.0, reuse_port=True, on_tick=tick, siblings_ready=all_loaded.is_set,
                        remote=remote, config_path=config_path,
                        config_overrides=lambda c: child_config(c, index, listen), on_reloaded=reloaded,
                        stream_peers=stream_peers,
                        admin_refusal="this daemon runs several processes ([server] processes > 1 or "
                                      "inference = \"shared\"): reload them together with SIGHUP to the supervisor (systemctl reload)")
        port = await daemon.start()
        events.put(("listening", index, port))
        loop = asyncio.get_running_loop()

        def report_loaded() -> None:
            daemon.registry.wait_loaded()
            events.put(("loaded", index, {m.name: (m.state.value, m.state_reason,
                                                   m.runner.info.device if m.runner else "")
                                          for m in daemon.registry}))

        loop.run_in_executor(None, report_loaded)
        await daemon.run()

    try:
        run(serve(), loop_kind)
    except BaseException as exc:  # noqa: BLE001 - reported, then the process ends non-zero
        events.put(("error", index, f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1)


class Supervisor:
    """Starts `config.server.processes` daemons on one port and watches them.

    `start()` returns once every child listens; `run()` serves until SIGTERM /
    SIGINT / `request_stop()` (returns 0) or a child dies (returns 1).
    """

    def __init__(self, config: Config, tick_s: float = 1.0,
                 on_loaded: Optional[Callable[[dict], None]] = None, config_path: Optional[str] = None):
        self.config = config
        self.config_path = config_path
        self._reload_requested = False
        self._reloading: Optional[set[int]] = None  # front-ends yet to report a reload
        self._reload_deadline = 0.0
        self._ready_sent = False
        self.tick_s = tick_s
        self.on_loaded = on_loaded  # called once with child 0's model states, when all loaded
        self.listen = config.server.listen
        self.count = config.server.processes
        self.shared = config.server.inference == "shared"
        # Indexes 0..count-1 are front-ends; the shared inference host, when there is one, is `count`.
        self.watched = self.count + (1 if self.shared else 0)
        self._ctx = mp.get_context("spawn")
        self._events = self._ctx.Queue()
        # Set once every child finished loading: until then every child's overall health
        # answers NOT_SERVING, whichever one a health check reaches.
        self._all_loaded = self._ctx.Event()
        self._procs: list = []
        self._last_tick: dict[int, float] = {}
        self._loaded: dict[int, dict] = {}
        self._stop = False
        # [[streams]] are spread over the front-ends, which reach each other through Unix sockets in
        # a folder of this process's own (mkdtemp: mode 0700), with a token made for this run.
        self._peers_dir: Optional[str] = None

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def start(self, timeout: float = 600.0) -> str:
        """Spawn the children; returns the shared listen address once all listen. Raises OSError."""
        self.listen = claim_listen(self.config.server.listen)
        kind = self.config.server.event_loop
        level = logging.getLogger().getEffectiveLevel()
        front_links: list = [None] * self.count
        if self.shared:
            front_links = self._start_host(level)
        token = secrets.token_urlsafe(32)
        self._peers_dir = tempfile.mkdtemp(prefix="edgeinfer-streams-")
        for i in range(self.count):
            peers = StreamPeers(i, self.count, self._peers_dir, token)
            p = self._ctx.Process(target=_child, name=f"edgeinfer-{i}",
                                  args=(child_config(self.config, i, self.listen), i, self._events,
                                        self._all_loaded, kind, level, front_links[i], self.config_path,
                                        self.listen, peers))
            p.start()
            self._procs.append(p)
            for conn in front_links[i] or []:  # the child has its own copies now
                conn.close()
        listening: set[int] = set()
        end = time.monotonic() + timeout
        while len(listening) < self.watched:
            kind_, index, value = self._next_event(end)
            if kind_ == "listening":
                listening.add(index)
        log.info("%d processes serving on %s (pids %s)", self.count, self.listen, self.pids)
        status = f"STATUS={self.count} processes serving on {self.listen}; loading models"
        if self.config.server.ready == "listening":
            self._ready_sent = True
            systemd.notify("READY=1", status)
        else:
            systemd.notify(status)
        return self.listen

    def _start_host(self, log_level: int) -> list:
        """Start the shared inference host; returns each front-end's end of its link (in a list)."""
        from edgeinfer.process.host import host_main

        pairs = [self._ctx.Pipe(duplex=True) for _ in range(self.count)]
        host_ends = [h for h, _f in pairs]
        # Index `count`: its metrics serve on the metrics port + the number of front-ends.
        p = self._ctx.Process(target=host_main, name=HOST_NAME,
                              args=(child_config(self.config, self.count, self.listen), host_ends, self._events,
                                    self.count, log_level, min(self.tick_s, 1.0)))
        p.start()
        self._procs.append(p)
        for conn in host_ends:
            conn.close()
        return [[f] for _h, f in pairs]

    def _next_event(self, end: float):
        """The next child event before `end`; raises OSError on a child error, death or timeout."""
        while True:
            try:
                event = self._events.get(timeout=min(self.tick_s, max(0.0, end - time.monotonic())))
            except queue.Empty:
                event = None
            if event is not None:
                if event[0] == "error":
                    self.stop()
                    raise OSError(f"process {event[1]} failed: {event[2]}")
                self._handle(event)
                return event
            dead = [p for p in self._procs if not p.is_alive()]
            if dead:
                self.stop()
                raise OSError(f"process {dead[0].name} exited with {dead[0].exitcode} while starting")
            if time.monotonic() >= end:
                self.stop()
                raise OSError(f"the {self.count} processes did not all listen on {self.listen} in time")

    def _handle(self, event) -> None:
        kind, index, value = event
        if kind == "tick":
            self._last_tick[index] = time.monotonic()
        elif kind == "reloaded":
            log.info("process %d: %s", index, value)
            if self._reloading is not None:
                self._reloading.discard(index)
                if not self._reloading:
                    self._reloading = None
                    systemd.notify("READY=1", f"STATUS={self.count} processes serving on {self.listen}; reloaded")
        elif kind == "loaded":
            self._loaded[index] = value
            if len(self._loaded) == self.count:
                self._all_loaded.set()
                # [server] ready = "all-models" / "any-model": judged once every process finished loading.
                ok = systemd.ready_by_policy(self.config.server.ready, (s[0] for s in self._loaded[0].values()))
                if not self._ready_sent and ok:
                    self._ready_sent = True
                    systemd.notify("READY=1")
                if self.on_loaded is not None:
                    self.on_loaded(self._loaded[0])

    def request_stop(self) -> None:
        self._stop = True

    def request_reload(self) -> None:
        self._reload_requested = True

    def _forward_reload(self) -> None:
        """SIGHUP every front-end; READY=1 follows once each reported its reload (_handle)."""
        self._reload_requested = False
        fronts = [(i, p) for i, p in enumerate(self._procs) if p.name != HOST_NAME and p.is_alive()]
        systemd.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}",
                       f"STATUS=reloading {len(fronts)} processes")
        log.info("reload: forwarding SIGHUP to %d process(es)", len(fronts))
        self._reloading = {int(p.name.rsplit("-", 1)[1]) for _i, p in fronts}
        # A model build can take minutes; past this, READY=1 goes out anyway (the children go on).
        self._reload_deadline = time.monotonic() + 600
        for _i, p in fronts:
            os.kill(p.pid, signal.SIGHUP)

    def run(self) -> int:
        """Watch the children until stopped (0) or one of them dies (1)."""
        handlers = {sig: self.request_stop for sig in signals.STOP}
        handlers[signals.RELOAD] = self.request_reload
        signals.route(handlers)
        started = time.monotonic()
        try:
            while not self._stop:
                if self._reload_requested and self._reloading is None:
                    self._forward_reload()
                if self._reloading is not None and time.monotonic() > self._reload_deadline:
                    log.warning("reload: process(es) %s did not report in time", sorted(self._reloading))
                    self._reloading = None
                    systemd.notify("READY=1")
                try:
                    self._handle(self._events.get(timeout=self.tick_s))
                except queue.Empty:
                    pass
                dead = [p for p in self._procs if not p.is_alive()]
                if dead and not self._stop:
                    log.error("process %s exited with %s: stopping the others so the service restarts whole",
                              dead[0].name, dead[0].exitcode)
                    return 1
                now = time.monotonic()
                stale = [i for i in range(self.watched)
                         if now - self._last_tick.get(i, started) > STALE_TICKS * self.tick_s]
                if stale:
                    log.warning("process(es) %s missed their health ticks; not feeding the watchdog", stale)
                else:
                    ready = sum(s[0] == "ready" for s in self._loaded.get(0, {}).values())
                    extend = [] if self._ready_sent or self._all_loaded.is_set() else [
                        f"EXTEND_TIMEOUT_USEC={int(max(30.0, 10 * self.tick_s) * 1e6)}"]
                    systemd.notify("WATCHDOG=1", f"STATUS={self.count} processes; {ready} model(s) ready", *extend)
            return 0
        finally:
            self.stop()

    def stop(self) -> None:
        """SIGTERM every child (each drains for grace_period_s), then kill what is left."""
        if not self._procs:
            return
        systemd.notify("STOPPING=1")
        # Front-ends first: they drain their requests through the inference host, stopped after them.
        fronts = [p for p in self._procs if p.name != HOST_NAME]
        hosts = [p for p in self._procs if p.name == HOST_NAME]
        for group in (fronts, hosts):
            for p in group:
                if p.is_alive():
                    p.terminate()
            end = time.monotonic() + self.config.server.grace_period_s + 10
            for p in group:
                p.join(max(0.0, end - time.monotonic()))
                if p.is_alive():
                    log.error("process %s did not stop in time; killing it", p.name)
                    p.kill()
                    p.join(5)
        self._procs = []
        if self._peers_dir is not None:
            shutil.rmtree(self._peers_dir, ignore_errors=True)
            self._peers_dir = None
