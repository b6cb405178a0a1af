"""The daemon's lifecycle: startup, main loop, graceful shutdown.

startup   bind the gRPC port, register services, tell systemd READY (the
          process is live), start loading models in the background
main loop every tick: refresh health, feed the systemd watchdog (only while
          the event loop and the worker pool answer)
shutdown  on SIGTERM/SIGINT: health NOT_SERVING, stop accepting, give
          in-flight calls `grace_period_s`, then cancel; unload models
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable, Optional

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from edgeinfer import __version__
from edgeinfer.process import signals, systemd
from edgeinfer.config import Config
from edgeinfer.observe.metrics import DaemonCollector, Metrics, MetricsEndpoint, MetricsEndpointError
from edgeinfer.model.served import ServedModel
from edgeinfer.model.types import ModelState
from edgeinfer.model.registry import ModelRegistry
from edgeinfer.rpc.methods import GenericOnly
from edgeinfer.serving.lanes import InferencePipeline
from edgeinfer.rpc.servicer import SERVICE_NAME, InferenceServicer, add_to_server
from edgeinfer.rpc import kserve
from edgeinfer.rpc import streams_servicer
from edgeinfer.observe.metrics import StreamCollector
from edgeinfer.streams.manager import StreamManager

log = logging.getLogger(__name__)

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Daemon:
    """One running edgeinfer server. `await Daemon(config).run()` serves until stopped."""

    def __init__(self, config: Config, tick_s: float = 1.0, reuse_port: bool = False,
                 on_tick: Optional[Callable[[], None]] = None,
                 siblings_ready: Optional[Callable[[], bool]] = None, remote=None):
        """reuse_port: share the port with sibling processes (process/supervisor.py); off, a
        second daemon on a taken port fails to bind instead of silently sharing it.
        on_tick: called after each healthy tick (the worker pool answered), from the loop.
        siblings_ready: with sibling processes, whether every one of them finished loading;
        overall health stays NOT_SERVING until it is true, so whichever process a health
        check reaches gives the same answer (checked on each tick).
        remote: a front-end of `[server] inference = "shared"`: the channels
        (serving.shared.remote.RemoteModels) to the process that runs the models."""
        self.config = config
        self.tick_s = tick_s
        self.reuse_port = reuse_port
        self.on_tick = on_tick
        self.siblings_ready = siblings_ready
        self._siblings_were_ready = siblings_ready is None
        self.registry = ModelRegistry(config, remote=remote)
        # Always collected (tests read the registry); served over HTTP only when enabled.
        self.metrics = Metrics()
        self.metrics.declare_models(self.registry.models)
        self.pipeline = InferencePipeline(config.server.workers, self.metrics,
                                          inline_max_us=config.server.inline_max_us)
        self.metrics.register(DaemonCollector(lambda: list(self.registry), self.pipeline.queue_depths,
                                              self.pipeline.in_flight, __version__, self.pipeline.max_batch))
        self.metrics_endpoint = MetricsEndpoint(self.metrics.registry, config.metrics)
        # [[streams]]: sources the daemon pulls itself (edgeinfer/streams), fed to the pipeline.
        self.streams = StreamManager(config.streams, self.registry, self.pipeline, self.metrics)
        if config.streams:
            self.metrics.register(StreamCollector(self.streams.stats))
        self.health = health.aio.HealthServicer()
        self.server: Optional[grpc.aio.Server] = None
        self.servicer: Optional[InferenceServicer] = None
        self.port: Optional[int] = None
        self._stop = asyncio.Event()
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    # -- startup ------------------------------------------------------------
    async def start(self) -> int:
        """Bind and start serving; returns the bound port. Models load in the background."""
        self._loop = asyncio.get_running_loop()
        limit = self.config.server.max_message_bytes
        self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 1 if self.reuse_port else 0),
        ])
        self.servicer = InferenceServicer(self.registry, self.pipeline, self.config.server.stream_window)
        add_to_server(self.servicer, self.server)
        # KServe v2 / Triton gRPC on the same port and data plane (rpc/kserve.py).
        kserve.add_to_server(kserve.KServeServicer(self.registry, self.pipeline, __version__,
                                                   self.config.server.stream_window), self.server)
        # Health and reflection through generic handlers only: a method registered with the core
        # costs every call a little (rpc/methods.py), and these are called rarely.
        health_pb2_grpc.add_HealthServicer_to_server(self.health, GenericOnly(self.server))
        streams_servicer.add_to_server(streams_servicer.StreamsServicer(self.streams, self.registry), self.server)
        names = [SERVICE_NAME, kserve.SERVICE_NAME, streams_servicer.SERVICE_NAME, health.SERVICE_NAME]
        if self.config.server.reflection:
            names.append(reflection.SERVICE_NAME)
            # What reflection.enable_server_reflection does for an aio server, minus the registration.
            reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflection.aio.ReflectionServicer(names),
                                                                        GenericOnly(self.server))
        listen = self.config.server.listen
        self.port = self.server.add_insecure_port(listen)
        if self.port == 0 and not listen.startswith("unix:"):
            raise OSError(f"cannot listen on {listen} (address in use or not allowed)")
        await self.server.start()
        log.info("serving edgeinfer.v1 on %s (port %s)", listen, self.port)
        if self.config.metrics.enabled:
            # Metrics are not worth refusing inference for: a taken port is logged
            # as an error, gRPC serves, and _tick retries the bind every 30 s.
            try:
                self.metrics_endpoint.start()
            except (MetricsEndpointError, ValueError) as exc:
                log.error("%s", exc)
        for model in self.registry:
            await self._publish(model)
        self.registry.add_listener(self._on_state_change)
        self.registry.start_loading()
        self.streams.start()
        systemd.notify("READY=1", f"STATUS=serving on {listen}; loading {len(self.registry.models)} model(s)")
        return self.port

    def _on_state_change(self, model: ServedModel) -> None:
        # Called from loader threads: hop onto the event loop.
        if self._loop is not None and not self._loop.is_closed():
            asyncio.run_coroutine_threadsafe(self._publish(model), self._loop)

    async def _publish(self, model: ServedModel) -> None:
        # The route first: a model reported SERVING already takes its requests the way chosen for it.
        self.servicer.route(model)
        await self.health.set(model.name, _SERVING if model.state is ModelState.READY else _NOT_SERVING)
        await self._publish_overall()

    async def _publish_overall(self) -> None:
        # Overall readiness: every model finished loading and at least one serves (and,
        # with sibling processes, every sibling finished loading too).
        # A failed model shows NOT_SERVING under its own name.
        states = [m.state for m in self.registry]
        ready = ModelState.LOADING not in states and ModelState.READY in states and self._siblings_were_ready
        overall = _SERVING if ready else _NOT_SERVING
        await self.health.set("", overall)
        await self.health.set(SERVICE_NAME, overall)

    # -- main loop ------------------------------------------------------------
    async def run(self) -> None:
        if self.server is None:
            await self.start()
        signals.route({sig: self.request_stop for sig in signals.STOP}, asyncio.get_running_loop())
        try:
            while not self._stop.is_set():
                try:
                    await asyncio.wait_for(self._stop.wait(), timeout=self.tick_s)
                except asyncio.TimeoutError:
                    await self._tick()
        finally:
            await self.stop()

    async def _tick(self) -> None:
        # The watchdog is fed only when a worker thread answers: a wedged pool
        # (e.g. a hung GPU call on every worker) lets systemd restart us.
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(self.pipeline.executor, lambda: True), timeout=5 * self.tick_s)
        except asyncio.TimeoutError:
            log.warning("worker pool did not answer within %.0fs; not feeding the watchdog", 5 * self.tick_s)
            return
        if self.config.metrics.enabled:
            self.metrics_endpoint.ensure_started()
        if not self._siblings_were_ready and self.siblings_ready():
            self._siblings_were_ready = True
            await self._publish_overall()
        ready = sum(m.state is ModelState.READY for m in self.registry)
        systemd.notify("WATCHDOG=1", f"STATUS={ready}/{len(self.registry.models)} models ready")
        if self.on_tick is not None:
            self.on_tick()

    def request_stop(self) -> None:
        self._stop.set()

    # -- shutdown -----------------------------------------------------------------
    async def stop(self) -> None:
        if self.server is None:
            return
        systemd.notify("STOPPING=1")
        log.info("shutting down: draining for up to %.1fs", self.config.server.grace_period_s)
        await self.health.enter_graceful_shutdown()
        # First: WatchStream calls end at once instead of holding the grace period.
        await self.streams.stop()
        await self.server.stop(self.config.server.grace_period_s)
        self.server = None
        # Queued requests still run (their callers are gone if the grace expired).
        self.pipeline.close(self.config.server.grace_period_s)
        self.registry.close()
        self.metrics_endpoint.stop()
        self.metrics.close()
        log.info("stopped")
