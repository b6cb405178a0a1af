"""The daemon's lifecycle: startup, main loop, graceful shutdown.

startup   bind the gRPC port, register services, start loading models in the
          background; tell systemd READY by [server] ready (port bound, every
          model ready, or one), extending the start timeout while models load
main loop every tick: refresh health and STATUS, feed the systemd watchdog
          (only while inference makes progress: serving/progress.py)
reload    on SIGHUP or Admin.Reload: re-read the config file; add, remove and
          update models (a changed model loads beside the old one, is swapped
          in, then the old one drains and unloads); RELOADING=1 ... READY=1
shutdown  on SIGTERM/SIGINT: STOPPING=1, health NOT_SERVING, stop accepting
          (new calls get UNAVAILABLE), open streams stop reading and answer
          what they read, in-flight calls get `grace_period_s`; unload models
"""
from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import time
from typing import Callable, Optional

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from edgeinfer import __version__
from edgeinfer.process import signals, systemd
from edgeinfer.config import Config, check_devices, load_config
from edgeinfer.errors import ConfigError
from edgeinfer.model import changes
from edgeinfer.model.changes import ModelChange, ReloadOutcome
from edgeinfer.rpc import admin
from edgeinfer.observe.metrics import DaemonCollector, Metrics, MetricsEndpoint, MetricsEndpointError
from edgeinfer.model.served import ServedModel
from edgeinfer.model.types import ModelState
from edgeinfer.model.registry import ModelRegistry
from edgeinfer.listen import claim_listen, parse_listen
from edgeinfer.rpc.auth import AuthInterceptor, ServerTls
from edgeinfer.rpc.methods import GenericOnly
from edgeinfer.serving.lanes import InferencePipeline
from edgeinfer.rpc.servicer import SERVICE_NAME, InferenceServicer, add_to_server
from edgeinfer.rpc import kserve
from edgeinfer.rpc import streams_servicer
from edgeinfer.rpc.stream_peers import StreamPeers
from edgeinfer.observe.metrics import StreamCollector
from edgeinfer.streams.manager import StreamManager

log = logging.getLogger(__name__)

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _loopback(listen: str) -> bool:
    """Whether `listen` reaches only this machine (a unix socket, localhost or a loopback address)."""
    if listen.startswith("unix:"):
        return True
    try:
        host, _ = parse_listen(listen, "[server] listen")
    except ValueError:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Daemon:
    """One running edgeinfer server. `await Daemon(config).run()` serves until stopped."""

    def __init__(self, config: Config, tick_s: float = 1.0, reuse_port: bool = False,
                 on_tick: Optional[Callable[[], None]] = None,
                 siblings_ready: Optional[Callable[[], bool]] = None, remote=None,
                 config_path: Optional[str] = None,
                 config_overrides: Callable[[Config], Config] = lambda c: c,
                 on_reloaded: Optional[Callable[[ReloadOutcome], None]] = None,
                 admin_refusal: str = "", stream_peers: Optional[StreamPeers] = None):
        """reuse_port: share the port with sibling processes (process/supervisor.py); off, a
        second daemon on a taken port fails to bind instead of silently sharing it.
        on_tick: called after each healthy tick (inference makes progress), from the loop.
        siblings_ready: with sibling processes, whether every one of them finished loading;
        overall health stays NOT_SERVING until it is true, so whichever process a health
        check reaches gives the same answer (checked on each tick).
        remote: a front-end of `[server] inference = "shared"`: the channels
        (serving.shared.remote.RemoteModels) to the process that runs the models.
        config_path: the file a reload re-reads (None: this daemon cannot reload);
        config_overrides: applied to every config read from it (e.g. `serve --listen`).
        on_reloaded: called with each reload's outcome (a supervisor's child reports it).
        admin_refusal: when set, Admin.Reload answers FAILED_PRECONDITION with it (a child of the
        supervisor reloads only with its siblings, on the supervisor's SIGHUP).
        stream_peers: with sibling processes, which [[streams]] this one pulls and how it reaches
        the others for the rest (rpc/stream_peers.py)."""
        check_devices(config, _visible_gpus())
        self.config = config
        self.config_path = config_path
        self.config_overrides = config_overrides
        self.on_reloaded = on_reloaded
        self.admin_refusal = admin_refusal
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
        self.stream_peers = stream_peers
        self.streams = StreamManager(self._pulled(config.streams), self.registry, self.pipeline, self.metrics)
        if config.streams:
            self.metrics.register(StreamCollector(self.streams.stats))
        self.health = health.aio.HealthServicer()
        self.server: Optional[grpc.aio.Server] = None
        self.servicer: Optional[InferenceServicer] = None
        self.port: Optional[int] = None
        # TLS credentials and role checks (rpc/auth.py); reload_security() re-reads them.
        self.tls: Optional[ServerTls] = None
        self.auth: Optional[AuthInterceptor] = None
        self._stop = asyncio.Event()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        # systemd notification state (process/systemd.py): READY sent, last STATUS, watchdog stalled.
        self._ready_sent = False
        self._status = ""
        self._stalled: Optional[str] = None
        # Reloads run one at a time; models loading beside the ones they will replace, by name.
        self._reload_lock: Optional[asyncio.Lock] = None
        self._beside: dict[str, ServedModel] = {}
        self._reloading = False
        self._reload_tasks: set[asyncio.Task] = set()

    def _pulled(self, streams: list) -> list:
        """The [[streams]] this process pulls: all of them, or its share among its siblings."""
        return self.stream_peers.mine(streams) if self.stream_peers is not None else list(streams)

    # -- startup ------------------------------------------------------------
    async def start(self) -> int:
        """Bind and start serving; returns the bound port. Models load in the background."""
        self._loop = asyncio.get_running_loop()
        # Before anything slow: a SIGHUP's default action would end the process.
        handlers = {sig: self.request_stop for sig in signals.STOP}
        handlers[signals.RELOAD] = self.request_reload
        signals.route(handlers, self._loop)
        limit = self.config.server.max_message_bytes
        listen = self.config.server.listen
        if not self.reuse_port:
            try:
                claim_listen(listen)
            except ValueError:  # not host:port: gRPC's own bind names what it could not use
                pass
        cfg = self.config
        if cfg.tls.enabled:
            self.tls = ServerTls(cfg.tls)
        # The interceptor exists only where roles are checked: without it no call pays for one.
        interceptors = []
        if cfg.roles_checked:
            self.auth = AuthInterceptor(cfg.auth, cfg.tls, self.stream_peers.token if self.stream_peers else None)
            interceptors.append(self.auth)
        self.server = grpc.aio.server(interceptors=interceptors, options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 1 if self.reuse_port else 0),
        ])
        self.servicer = InferenceServicer(self.registry, self.pipeline, self.config.server.stream_window,
                                          limits=cfg.limits)
        add_to_server(self.servicer, self.server)
        can_reload = self.config_path is not None and not self.admin_refusal
        admin.add_to_server(admin.AdminServicer(self.reload if can_reload else None, self.admin_refusal or
                                                "this daemon has no config file to reload (started in-process)"),
                            self.server)
        # KServe v2 / Triton gRPC on the same port and data plane (rpc/kserve.py).
        kserve.add_to_server(kserve.KServeServicer(self.registry, self.pipeline, __version__,
                                                   self.config.server.stream_window, self.config.limits,
                                                   self.servicer.rate_limiter), self.server)
        streams_servicer.add_to_server(streams_servicer.StreamsServicer(
            self.streams, self.registry, self.stream_peers, lambda: self.config.streams), self.server)
        # Health and reflection through generic handlers only: a method registered with the core
        # costs every call a little (rpc/methods.py), and these are called rarely.
        health_pb2_grpc.add_HealthServicer_to_server(self.health, GenericOnly(self.server))
        names = [SERVICE_NAME, admin.SERVICE_NAME, kserve.SERVICE_NAME, streams_servicer.SERVICE_NAME,
                 health.SERVICE_NAME]
        if self.config.server.reflection:
            names.append(reflection.SERVICE_NAME)
            # What reflection.enable_server_reflection does for an aio server, minus the registration.
            reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflection.aio.ReflectionServicer(names),
                                                                        GenericOnly(self.server))
        try:
            if self.tls is not None:
                self.port = self.server.add_secure_port(listen, self.tls.credentials())
            else:
                self.port = self.server.add_insecure_port(listen)
        except RuntimeError:  # grpcio >= 1.6x raises where older ones returned 0
            self.port = 0
        if self.port == 0 and not listen.startswith("unix:"):
            raise OSError(f"cannot listen on {listen} (address in use or not allowed)")
        if self.stream_peers is not None:  # the sibling processes' way in, for the streams this one pulls
            self.server.add_insecure_port(self.stream_peers.address())
        await self.server.start()
        log.info("serving edgeinfer.v1 on %s (port %s, %s%s)", listen, self.port,
                 "TLS" if self.tls else "plain text",
                 ", client certificates required" if self.tls and self.tls.require_client_cert else "")
        if self.tls is None and not _loopback(listen):
            log.warning("%s is reachable from other machines over plain text: anyone on the network can "
                        "call the daemon and read its traffic; set [tls] cert and key (docs/security.md)", listen)
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
        self._notify_state()
        return self.port

    def reload_security(self, config: Config) -> None:
        """Re-read the TLS files and take new tokens and subject mappings from `config` (for a config
        reload). New connections get the new certificate; calls already admitted go on.

        Raises:
            ConfigError: a TLS file is missing or unusable; nothing was changed.
        """
        if self.tls is not None:
            if not config.tls.enabled:
                raise ConfigError("[tls] cannot be turned off without a restart")
            self.tls.reload(config.tls)
        elif config.tls.enabled:
            log.warning("[tls] is new in this config: TLS starts on restart")
        if self.auth is not None:
            self.auth.update(config.auth, config.tls)
        elif config.roles_checked:
            log.warning("[auth] tokens / [tls] subject_roles are new in this config: role checks start on restart")

    # -- systemd: READY by policy, STATUS, EXTEND_TIMEOUT_USEC -----------------------
    def _ready_by_policy(self) -> bool:
        return systemd.ready_by_policy(self.config.server.ready, (m.state.value for m in self.registry))

    def _status_line(self) -> str:
        """What `systemctl status` shows: loading progress, what serves, what failed or stalls."""
        models = list(self.registry)
        loading = [m for m in models if m.state is ModelState.LOADING] + list(self._beside.values())
        ready = [m.name for m in models if m.state is ModelState.READY]
        failed = [m.name for m in models if m.state is ModelState.FAILED]
        parts = []
        if self._stalled:
            parts.append(f"STALLED ({self._stalled})")
        if self._reloading:
            parts.append("reloading")
        if loading:
            parts.append(f"loading {len(loading)} model{'s' if len(loading) != 1 else ''}: "
                         + "; ".join(f"{m.name} {m.state_reason}" for m in loading))
        parts.append(f"serving {len(ready)} model{'s' if len(ready) != 1 else ''}"
                     + (f" ({', '.join(ready)})" if ready and len(ready) <= 4 else ""))
        if failed:
            parts.append(f"{len(failed)} failed ({', '.join(failed)})")
        if not self._ready_sent:
            parts.append(f"not ready yet ([server] ready = \"{self.config.server.ready}\")")
        return ", ".join(parts) + f" on {self.config.server.listen}"

    def _notify_state(self) -> None:
        """READY=1 once the policy holds; STATUS= when it changed; EXTEND_TIMEOUT_USEC while models load
        before READY, and while a reload runs (so a slow first engine build outlives TimeoutStartSec)."""
        lines = []
        if not self._ready_sent and self._ready_by_policy():
            self._ready_sent = True
            lines.append("READY=1")
        status = self._status_line()
        if status != self._status:
            self._status = status
            lines.append(f"STATUS={status}")
        loading = any(m.state is ModelState.LOADING for m in self.registry)
        if (loading and not self._ready_sent) or self._reloading:
            lines.append(f"EXTEND_TIMEOUT_USEC={int(max(30.0, 10 * self.tick_s) * 1e6)}")
        if lines:
            systemd.notify(*lines)

    def _on_state_change(self, model: ServedModel) -> None:
        # Called from loader threads: hop onto the event loop.
        if self._loop is not None and not self._loop.is_closed():
            asyncio.run_coroutine_threadsafe(self._publish(model), self._loop)

    async def _publish(self, model: ServedModel) -> None:
        if model.retired or self.registry.models.get(model.name) is not model:
            return  # replaced or removed by a reload: its name's health belongs to the new one
        # The route first: a model reported SERVING already takes its requests the way chosen for it.
        self.servicer.route(model)
        await self.health.set(model.name, _SERVING if model.state is ModelState.READY else _NOT_SERVING)
        await self._publish_overall()
        self._notify_state()

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
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + self.tick_s
        try:
            while not self._stop.is_set():
                try:
                    # On a fixed schedule: a tick delayed by a busy loop does not push back the next
                    # (the watchdog pings stay within WatchdogSec / 2).
                    await asyncio.wait_for(self._stop.wait(), timeout=max(0.0, next_tick - loop.time()))
                except asyncio.TimeoutError:
                    next_tick = max(next_tick + self.tick_s, loop.time() + self.tick_s / 4)
                    await self._tick()
        finally:
            await self.stop()

    async def _tick(self) -> None:
        # The watchdog is fed while inference makes progress: no runner call has run longer than
        # [server] watchdog_stall_s (serving/progress.py). Read here on the loop, without waiting
        # behind the requests; a wedged loop never gets here, which stops the pings too.
        if self.config.metrics.enabled:
            self.metrics_endpoint.ensure_started()
        if not self._siblings_were_ready and self.siblings_ready():
            self._siblings_were_ready = True
            await self._publish_overall()
        stalled = self.pipeline.stalled(self.config.server.watchdog_stall_s)
        if stalled != self._stalled:
            if stalled:
                log.error("inference stalled: %s; not feeding the watchdog", stalled)
            else:
                log.warning("inference makes progress again; feeding the watchdog")
            self._stalled = stalled
        self._notify_state()
        if stalled:
            return
        systemd.notify("WATCHDOG=1")
        if self.on_tick is not None:
            self.on_tick()

    def request_stop(self) -> None:
        self._stop.set()

    # -- reload -------------------------------------------------------------------------
    def request_reload(self) -> None:
        """SIGHUP: reload in the background (the loop keeps serving)."""
        task = asyncio.ensure_future(self.reload())
        self._reload_tasks.add(task)
        task.add_done_callback(self._reload_tasks.discard)

    async def reload(self) -> ReloadOutcome:
        """Re-read the config file and apply it; one reload at a time. Never raises: a refused config
        is an outcome (accepted = False), the running one keeps serving."""
        if self._reload_lock is None:
            self._reload_lock = asyncio.Lock()
        async with self._reload_lock:
            # MONOTONIC_USEC lets systemd (Type=notify-reload) match this RELOADING=1 to its request.
            systemd.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}",
                           f"STATUS=reloading {self.config_path}")
            self._reloading = True
            try:
                outcome = await self._reload()
            except Exception as exc:  # noqa: BLE001 - a reload must never take the daemon down
                log.exception("reload failed")
                outcome = ReloadOutcome(False, str(self.config_path or ""), f"{type(exc).__name__}: {exc}")
            finally:
                self._reloading = False
            if outcome.accepted:
                log.info("%s", outcome.summary())
                for c in outcome.models:
                    if c.action != changes.UNCHANGED:
                        log.info("reload: model %s %s%s%s", c.name, c.action, f" ({c.detail})" if c.detail else "",
                                 f": {c.error}" if c.error else "")
            else:
                log.error("%s; the running config keeps serving", outcome.summary())
            self._status = ""  # say where we stand again after READY=1
            systemd.notify("READY=1")
            self._notify_state()
            if self.on_reloaded is not None:
                self.on_reloaded(outcome)
            return outcome

    async def _reload(self) -> ReloadOutcome:
        path = str(self.config_path or "")
        if not self.config_path:
            return ReloadOutcome(False, path, "this daemon has no config file to reload (started in-process)")
        loop = asyncio.get_running_loop()

        def read() -> tuple[Config, dict]:
            new = self.config_overrides(load_config(self.config_path))
            check_devices(new, _visible_gpus())
            return new, {m.name: _digest(m.onnx) for m in new.models}

        try:
            new, new_digests = await loop.run_in_executor(None, read)
            # New TLS files and tokens: the next handshake and call use them (rpc/auth.py). Unreadable
            # TLS files refuse the whole reload, before anything changed.
            self.reload_security(new)
        except ConfigError as exc:
            return ReloadOutcome(False, path, str(exc))
        current = {name: m.cfg for name, m in self.registry.models.items()}
        plan = changes.plan_models(current, {n: m.onnx_digest for n, m in self.registry.models.items()},
                                   new, new_digests)
        for c in plan:
            # A model that failed to load is tried again (the cause may be fixed: a driver, a library).
            if c.action == changes.UNCHANGED and self.registry.models[c.name].state is ModelState.FAILED:
                c.action, c.detail = changes.UPDATED, "retried: it had failed to load"
        outcome = ReloadOutcome(True, path, needs_restart=changes.settings_needing_restart(self.config, new))
        if self.registry.remote is not None and any(c.action != changes.UNCHANGED for c in plan):
            # The models live in the shared inference process, which does not reload.
            outcome.needs_restart.append("[[models]] (with [server] inference = \"shared\")")
            outcome.models = [ModelChange(c.name, changes.UNCHANGED if c.action == changes.UNCHANGED else changes.FAILED,
                                          c.detail, "models of the shared inference process change on restart only")
                              for c in plan]
            return outcome
        self.config = changes.apply_live_settings(self.config, new)
        self.registry.config = self.config
        new_cfgs = {m.name: m for m in new.models}
        outcome.models = list(await asyncio.gather(*[self._apply(c, new_cfgs.get(c.name), new_digests.get(c.name))
                                                           for c in plan]))
        # Streams after the models: a stream of a model just added finds it in the registry.
        self.config = dataclasses.replace(self.config, streams=list(new.streams))
        for name, action in (await self.streams.reconfigure(self._pulled(new.streams), self.registry,
                                                            self.pipeline, self.metrics)).items():
            if action != "unchanged":
                log.info("reload: stream %s %s", name, action)
        await self._publish_overall()
        return outcome

    async def _apply(self, change: ModelChange, cfg, digest: Optional[str] = None) -> ModelChange:
        """Carry out one model's part of a reload (event loop); returns what happened. `digest`: the
        ONNX file's sha256 the reload just read (the new model's load need not read it again)."""
        if change.action == changes.UNCHANGED:
            return change
        if change.action == changes.REMOVED:
            old = self.registry.remove(change.name)
            await self.health.set(change.name, _NOT_SERVING)
            await self._retire(old)
            return change
        model = self.registry.new_model(cfg)
        model.onnx_digest = digest
        old = self.registry.models.get(change.name)
        if change.action == changes.ADDED or old.state is not ModelState.READY:
            # Nothing serves under this name: the new model takes the name at once and loads there.
            self.metrics.declare_models([change.name])
            if old is not None:
                self.registry.replace(model)
                await self._retire(old)
            else:
                self.registry.add(model)
            await self._publish(model)
            await asyncio.wrap_future(self.registry.load_in_thread(model))
        else:
            # Load, build and warm up beside the old model, which serves meanwhile.
            self._beside[change.name] = model
            try:
                await asyncio.wrap_future(self.registry.load_in_thread(model))
            finally:
                self._beside.pop(change.name, None)
            if model.state is not ModelState.READY:
                model.unload()
                return ModelChange(change.name, changes.FAILED, change.detail,
                                   f"{model.state_reason}; the previous version keeps serving")
            old = self.registry.replace(model)  # from here every new request gets the new model
            await self._publish(model)
            await self._retire(old)
        if model.state is not ModelState.READY:
            return ModelChange(change.name, changes.FAILED, change.detail, model.state_reason)
        return change

    async def _retire(self, old: ServedModel) -> None:
        """Let the requests on a replaced or removed model finish, then unload it."""
        if old.runner is not None:
            if not await self.pipeline.drain(old, max(self.config.server.grace_period_s, 1.0)):
                log.warning("model %s: requests still running on the replaced version after %.0f s; unloading it",
                            old.name, self.config.server.grace_period_s)
        await asyncio.get_running_loop().run_in_executor(None, old.unload)
        log.info("model %s: the %s version answered its requests and is unloaded", old.name,
                 "removed" if old.name not in self.registry.models else "replaced")

    # -- shutdown -----------------------------------------------------------------
    async def stop(self) -> None:
        if self.server is None:
            return
        systemd.notify("STOPPING=1", "STATUS=stopping: answering the requests already accepted")
        log.info("shutting down: draining for up to %.1fs", self.config.server.grace_period_s)
        await self.health.enter_graceful_shutdown()
        # First: WatchStream calls end at once instead of holding the grace period.
        await self.streams.stop()
        if self.stream_peers is not None:
            await self.stream_peers.close()
        # stop() refuses new calls at once (UNAVAILABLE) and waits for the running ones; a stream
        # would otherwise run to the end of the grace period and be cancelled with frames unanswered.
        stopping = asyncio.ensure_future(self.server.stop(self.config.server.grace_period_s))
        await asyncio.sleep(0)
        if self.servicer is not None:
            open_streams = self.servicer.drain_streams()
            if open_streams:
                log.info("%d open stream(s): answering the frames they read, then ending them", open_streams)
        await stopping
        self.server = None
        # Queued requests still run (their callers are gone if the grace expired).
        self.pipeline.close(self.config.server.grace_period_s)
        for model in list(self._beside.values()):
            model.unload()
        self.registry.close()
        self.metrics_endpoint.stop()
        self.metrics.close()
        log.info("stopped")


def _visible_gpus() -> int:
    from edgeinfer import platform

    return platform.visible_gpu_count()


def _digest(path: str) -> Optional[str]:
    from edgeinfer.cache.files import file_sha256

    try:
        return file_sha256(path)
    except OSError:
        return None


