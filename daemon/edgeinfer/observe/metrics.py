"""Prometheus metrics: one registry per Daemon, served over HTTP at [metrics] listen.

Counters and histograms are updated on the request path (`Metrics`). Everything
that is a *state* (model state, which backend/precision serves, why the loader
fell back, queue depth, in-flight requests, GPU memory/utilization) is read at
scrape time by collectors, so a scrape always shows the present and nothing on
the request path keeps gauges in sync.

A per-Daemon `CollectorRegistry` (never prometheus_client's global one) lets
tests run several daemons in one process.

Metric names are listed in `METRIC_NAMES` and used by configs/grafana-dashboard.json.
"""
from __future__ import annotations

import glob
import logging
import socket
import threading
import time
from http.server import ThreadingHTTPServer
from typing import Callable, Iterable, Optional

import prometheus_client
from prometheus_client import CollectorRegistry
from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import MetricsHandler

from edgeinfer.listen import parse_listen
from edgeinfer.observe.tally import RequestTally

log = logging.getLogger(__name__)

# Seconds. From 100 us (a tiny model's inference) to 10 s (a request stuck behind a build).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STAGES = ("queue", "preprocess", "inference", "postprocess", "total")
# Label value for requests that name no served model: keeps clients from
# creating one time series per misspelt name. Cannot collide with a model name
# (config allows only letters, digits, '-', '_', '.').
UNKNOWN_MODEL = "(unknown)"
_MAX_REASON = 200

METRIC_NAMES = {
    "edgeinfer_requests_total": "counter {model, code}: finished Infer calls and stream frames by gRPC status",
    "edgeinfer_request_latency_seconds": "histogram {model, stage}: stage = queue|preprocess|inference|postprocess|total",
    "edgeinfer_batch_size": "histogram {model}: requests per executed batch (rows for tensor batches)",
    "edgeinfer_deadline_expired_total": "counter {model}: requests dropped before compute because the client deadline passed",
    "edgeinfer_queue_full_total": "counter {model}: requests refused with RESOURCE_EXHAUSTED (max_queue reached)",
    "edgeinfer_queue_depth": "gauge {model}: admitted requests not yet running (preprocessing or waiting for a batch)",
    "edgeinfer_requests_in_flight": "gauge {model}: requests inside the pipeline",
    "edgeinfer_model_state": "gauge {model, state}: 1 for the model's current state (loading|ready|failed)",
    "edgeinfer_model_info": "gauge {model, version, backend, precision, device, max_batch}: 1 while loaded",
    "edgeinfer_model_load_seconds": "gauge {model}: how long the last load took",
    "edgeinfer_model_load_attempt_info": "gauge {model, step, backend, precision, outcome, reason}: the loader's fallback chain",
    "edgeinfer_gpu_memory_used_bytes": "gauge {gpu, name}: NVML only",
    "edgeinfer_gpu_memory_total_bytes": "gauge {gpu, name}: NVML only",
    "edgeinfer_gpu_utilization_ratio": "gauge {gpu, name, source}: 0..1; NVML, or Jetson sysfs load",
    "edgeinfer_build_info": "gauge {version}: 1",
    "process_resident_memory_bytes": "gauge: daemon RSS (prometheus_client process collector, Linux)",
}

# Exported only by a daemon with [[streams]] (observe.metrics.StreamCollector).
STREAM_METRIC_NAMES = {
    "edgeinfer_stream_state": "gauge {stream, state}: 1 for the stream's current state (connecting|live|stalled|reconnecting|stopped)",
    "edgeinfer_stream_state_changes_total": "counter {stream, state}: times the stream entered each state",
    "edgeinfer_stream_frames_total": "counter {stream, kind}: kind = in (captured) | processed | dropped (late) | skipped (fps sampling) | failed",
    "edgeinfer_stream_reconnects_total": "counter {stream}: reconnect attempts",
    "edgeinfer_stream_subscriber_drops_total": "counter {stream}: results dropped from slow subscribers' queues",
    "edgeinfer_stream_fps": "gauge {stream, direction}: direction = in | out, over the last 5 s",
    "edgeinfer_stream_latency_seconds": "histogram {stream}: capture of a frame to its result",
}


class Metrics:
    """The request-path instruments of one daemon, in their own registry.

    Args:
        registry: where to register; a fresh CollectorRegistry by default.
        process: add the process (RSS, CPU, fds), platform and GC collectors.
    """

    def __init__(self, registry: Optional[CollectorRegistry] = None, process: bool = True):
        # The *_created series (one per labelled counter/histogram) double the
        # exposition for nothing a dashboard uses. Process-wide setting; the
        # daemon owns its process.
        getattr(prometheus_client, "disable_created_metrics", lambda: None)()  # >= 0.17
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        # Counters and histograms of the request path: folded at scrape time (see edgeinfer.observe.tally).
        self.tally = RequestTally(LATENCY_BUCKETS, STAGES, BATCH_BUCKETS)
        r.register(self.tally)
        if process:
            # RSS, CPU seconds, open fds (Linux /proc); Python version; GC counts.
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self._gpu = GpuCollector()
        r.register(self._gpu)
        self._stream_latency = None

    def declare_models(self, names: Iterable[str]) -> None:
        """Export zeros for each model's counters from the start (rate() needs the first sample)."""
        self.tally.declare(names)

    # -- request path -------------------------------------------------------------
    def observe_request(self, model: str, code: str) -> None:
        self.tally.request(model, code)

    def observe_timing(self, model: str, timing) -> None:
        """`timing`: pipeline.model.Timing (microseconds)."""
        t = timing
        self.tally.timing(model, (t.queue_us, t.preprocess_us, t.inference_us, t.postprocess_us, t.total_us))

    def observe_ok(self, model: str, row: tuple) -> None:
        """One successful request and its stage times in one step: (queue, preprocess, inference,
        postprocess, total) microseconds."""
        self.tally.ok(model, row)

    def observe_batch(self, model: str, size: int) -> None:
        self.tally.batch(model, size)

    def observe_deadline_expired(self, model: str) -> None:
        self.tally.deadline_expired(model)

    def observe_queue_full(self, model: str) -> None:
        self.tally.queue_full(model)

    def observe_stream_latency(self, stream: str, seconds: float) -> None:
        """Capture-to-result latency of one stream frame (a few per second per stream: a plain histogram)."""
        if self._stream_latency is None:
            self._stream_latency = prometheus_client.Histogram(
                "edgeinfer_stream_latency_seconds", "Seconds from a stream frame's capture to its result.",
                ["stream"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self._stream_latency.labels(stream).observe(seconds)

    def register(self, collector) -> None:
        self.registry.register(collector)

    def close(self) -> None:
        self._gpu.close()


# -- state read at scrape time ----------------------------------------------------

class DaemonCollector:
    """Model state, backend, fallback chain, queue depth and in-flight counts, read per scrape.

    Args:
        models: returns the ServedModel objects (the registry).
        queue_depth / in_flight: model name -> count (the inference pipeline).
        max_batch: model -> the batch size it is served with.
    """

    def __init__(self, models: Callable[[], Iterable], queue_depth: Callable[[], dict],
                 in_flight: Callable[[], dict], version: str = "",
                 max_batch: Callable[[object], int] = lambda m: m.runner.info.max_batch or 1):
        self._models = models
        self._max_batch = max_batch
        self._queue_depth = queue_depth
        self._in_flight = in_flight
        self._version = version

    def describe(self):
        # Lets the registry check name clashes without calling collect().
        return list(self._families())

    def collect(self):
        return self._families(live=True)

    def _families(self, live: bool = False):
        state = GaugeMetricFamily("edgeinfer_model_state",
                                  "1 for the model's current state (loading, ready, failed), 0 for the others.",
                                  labels=["model", "state"])
        info = GaugeMetricFamily("edgeinfer_model_info", "Where a loaded model runs: backend, precision, "
                                 "device, and the batch size it is served with.",
                                 labels=["model", "version", "backend", "precision", "device", "max_batch"])
        load_s = GaugeMetricFamily("edgeinfer_model_load_seconds", "Seconds the last load of the model took.",
                                   labels=["model"])
        attempts = GaugeMetricFamily("edgeinfer_model_load_attempt_info",
                                     "The loader's fallback chain: one series per step, with its outcome "
                                     "(selected, failed, skipped) and reason.",
                                     labels=["model", "step", "backend", "precision", "outcome", "reason"])
        depth = GaugeMetricFamily("edgeinfer_queue_depth",
                                  "Admitted requests not yet running (being preprocessed or waiting for a batch).",
                                  labels=["model"])
        flight = GaugeMetricFamily("edgeinfer_requests_in_flight", "Requests inside the inference pipeline.",
                                   labels=["model"])
        build = GaugeMetricFamily("edgeinfer_build_info", "edgeinfer version.", labels=["version"])
        if live:
            build.add_metric([self._version], 1)
            depths, flights = self._queue_depth(), self._in_flight()
            for m in self._models():
                name = m.name
                current = m.state.value
                for s in type(m.state):
                    state.add_metric([name, s.value], 1.0 if s.value == current else 0.0)
                runner = m.runner
                if runner is not None:
                    ri = runner.info
                    info.add_metric([name, m.cfg.version, ri.backend, ri.precision, ri.device,
                                     str(self._max_batch(m))], 1)
                if m.load_seconds:
                    load_s.add_metric([name], m.load_seconds)
                for i, a in enumerate(list(m.attempts)):
                    attempts.add_metric([name, str(i), a.backend, a.precision, a.outcome,
                                         _one_line(a.reason)], 1)
                depth.add_metric([name], depths.get(name, 0))
                flight.add_metric([name], flights.get(name, 0))
        return [state, info, load_s, attempts, depth, flight, build]


class StreamCollector:
    """Per-stream state and counters, read per scrape from `stats()` (objects with the fields of
    edgeinfer.streams.manager.StreamStats)."""

    STATES = ("connecting", "live", "stalled", "reconnecting", "stopped")
    KINDS = ("in", "processed", "dropped", "skipped", "failed")

    def __init__(self, stats: Callable[[], Iterable]):
        self._stats = stats

    def describe(self):
        return list(self._families())

    def collect(self):
        return self._families(live=True)

    def _families(self, live: bool = False):
        state = GaugeMetricFamily("edgeinfer_stream_state", "1 for the stream's current state, 0 for the others.",
                                  labels=["stream", "state"])
        changes = CounterMetricFamily("edgeinfer_stream_state_changes", "Times the stream entered each state.",
                                      labels=["stream", "state"])
        frames = CounterMetricFamily("edgeinfer_stream_frames", "Stream frames: in (captured), processed, dropped "
                                     "(replaced before inference took them), skipped (fps sampling), failed.",
                                     labels=["stream", "kind"])
        reconnects = CounterMetricFamily("edgeinfer_stream_reconnects", "Reconnect attempts of the stream.",
                                         labels=["stream"])
        sub_drops = CounterMetricFamily("edgeinfer_stream_subscriber_drops", "Results dropped from slow "
                                        "subscribers' queues.", labels=["stream"])
        fps = GaugeMetricFamily("edgeinfer_stream_fps", "Frames per second over the last 5 s: in (captured), "
                                "out (results).", labels=["stream", "direction"])
        if live:
            for s in self._stats():
                for name in self.STATES:
                    state.add_metric([s.name, name], 1.0 if s.state == name else 0.0)
                    changes.add_metric([s.name, name], s.state_changes.get(name, 0))
                for kind, value in zip(self.KINDS, (s.frames_in, s.frames_processed, s.frames_dropped,
                                                    s.frames_skipped, s.frames_failed)):
                    frames.add_metric([s.name, kind], value)
                reconnects.add_metric([s.name], s.reconnects)
                sub_drops.add_metric([s.name], s.subscriber_drops)
                fps.add_metric([s.name, "in"], s.fps_in)
                fps.add_metric([s.name, "out"], s.fps_out)
        return [state, changes, frames, reconnects, sub_drops, fps]


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_REASON else text[:_MAX_REASON - 3] + "..."


class GpuCollector:
    """GPU memory and utilization: NVML where present (dGPU), else Jetson sysfs load.

    NVML comes from `pynvml` (pip package nvidia-ml-py, the `gpu` extra), imported
    only here and only optionally: without it, or without a driver, nothing is
    exported. Jetson has no NVML; its GPU load is a per-mille value in sysfs
    (memory is shared with the CPU, so no GPU memory series there).
    """

    JETSON_LOAD_GLOBS = (
        "/sys/devices/gpu.0/load",                     # JetPack 4/5 (Xavier, Nano)
        "/sys/devices/platform/gpu.0/load",
        "/sys/devices/platform/bus@0/*.gpu/load",       # JetPack 6 (Orin: 17000000.gpu)
        "/sys/devices/platform/*gpu*/load",
        "/sys/devices/platform/bus@0/*.ga10b/load",
    )

    def __init__(self, nvml=None, sysfs_globs: Optional[Iterable[str]] = None):
        self._lock = threading.Lock()
        self._nvml = None
        self._handles: list = []
        self._load_files: list[str] = []
        try:
            self._init_nvml(nvml)
        except Exception as exc:  # noqa: BLE001 - no driver, no library, old driver: just no NVML series
            log.debug("NVML unavailable: %s", exc)
            self._nvml, self._handles = None, []
        if self._nvml is None:
            seen = []
            for pattern in (self.JETSON_LOAD_GLOBS if sysfs_globs is None else sysfs_globs):
                for path in sorted(glob.glob(pattern)):
                    if path not in seen and _read_int(path) is not None:
                        seen.append(path)
            self._load_files = seen[:1]  # one GPU on a Jetson; several globs may name it

    def _init_nvml(self, nvml) -> None:
        if nvml is None:
            import pynvml as nvml  # optional: the gpu extra (nvidia-ml-py)
        nvml.nvmlInit()
        self._nvml = nvml
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            name = nvml.nvmlDeviceGetName(h)
            self._handles.append((str(i), name.decode() if isinstance(name, bytes) else str(name), h))

    @property
    def source(self) -> str:
        return "nvml" if self._nvml is not None else ("sysfs" if self._load_files else "none")

    def describe(self):
        return []  # the series depend on the machine; nothing to check up front

    def collect(self):
        used = GaugeMetricFamily("edgeinfer_gpu_memory_used_bytes", "GPU memory in use (NVML).",
                                 labels=["gpu", "name"])
        total = GaugeMetricFamily("edgeinfer_gpu_memory_total_bytes", "GPU memory size (NVML).",
                                  labels=["gpu", "name"])
        util = GaugeMetricFamily("edgeinfer_gpu_utilization_ratio",
                                 "Fraction of time the GPU was busy over the last sample period (0..1).",
                                 labels=["gpu", "name", "source"])
        with self._lock:
            if self._nvml is not None:
                for idx, name, h in self._handles:
                    try:
                        mem = self._nvml.nvmlDeviceGetMemoryInfo(h)
                        used.add_metric([idx, name], float(mem.used))
                        total.add_metric([idx, name], float(mem.total))
                    except Exception as exc:  # noqa: BLE001 - e.g. GPU lost; skip this sample
                        log.debug("NVML memory query failed for GPU %s: %s", idx, exc)
                    try:
                        rates = self._nvml.nvmlDeviceGetUtilizationRates(h)
                        util.add_metric([idx, name, "nvml"], rates.gpu / 100.0)
                    except Exception as exc:  # noqa: BLE001 - not supported on some (MIG) devices
                        log.debug("NVML utilization query failed for GPU %s: %s", idx, exc)
            for i, path in enumerate(self._load_files):
                value = _read_int(path)
                if value is not None:
                    util.add_metric([str(i), "jetson", "sysfs"], min(value, 1000) / 1000.0)
        out = []
        if used.samples:
            out += [used, total]
        if util.samples:
            out.append(util)
        return out

    def close(self) -> None:
        with self._lock:
            if self._nvml is not None:
                try:
                    self._nvml.nvmlShutdown()
                except Exception:  # noqa: BLE001
                    pass
                self._nvml, self._handles = None, []


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path, "rb") as f:
            return int(f.read().strip() or b"x")
    except (OSError, ValueError):
        return None


# -- HTTP endpoint ----------------------------------------------------------------

class MetricsEndpointError(OSError):
    """The metrics endpoint could not listen; the message says where and why."""


class MetricsEndpoint:
    """Serves one registry at http://listen/metrics (any path answers) on a daemon thread.

    Args:
        registry: what to serve.
        config: the [metrics] table (MetricsConfig); `listen` is read at each start.
        retry_s: least time between two binds tried by ensure_started().

    `start()` raises MetricsEndpointError when the address is taken; `ensure_started()`
    is the same but logs instead and retries at most every `retry_s` (called from the
    daemon's tick, so metrics appear once the port frees up).
    """

    def __init__(self, registry: CollectorRegistry, config, retry_s: float = 30.0):
        self.registry = registry
        self.config = config  # config.MetricsConfig; `listen` is read when starting
        self.retry_s = retry_s
        self.port: Optional[int] = None
        self.error: Optional[str] = None
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._last_try = 0.0

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def listen(self) -> str:
        return self.config.listen

    def start(self) -> int:
        host, port = parse_listen(self.listen)
        handler = MetricsHandler.factory(self.registry)
        server_cls = _V6Server if ":" in host else _V4Server
        self._last_try = time.monotonic()
        try:
            server = server_cls((host, port), handler)
        except OSError as exc:
            why = "address already in use (another edgeinfer or exporter?)" if exc.errno == 98 else (exc.strerror or str(exc))
            self.error = (f"metrics endpoint not started: cannot listen on {self.listen}: {why}; "
                          f"gRPC keeps serving; change [metrics] listen or free the port")
            raise MetricsEndpointError(exc.errno, self.error) from exc
        self._server = server
        self.port = server.server_address[1]
        self.error = None
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="metrics-http", daemon=True)
        self._thread.start()
        log.info("metrics on http://%s:%s/metrics", host if ":" not in host else f"[{host}]", self.port)
        return self.port

    def ensure_started(self) -> bool:
        """Start if not running and the last try is `retry_s` old; True when serving."""
        if self._server is not None:
            return True
        if time.monotonic() - self._last_try < self.retry_s:
            return False
        try:
            self.start()
        except (MetricsEndpointError, ValueError) as exc:
            log.error("%s (retrying every %.0fs)", exc, self.retry_s)
            return False
        return True

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


class _V4Server(ThreadingHTTPServer):
    daemon_threads = True
    address_family = socket.AF_INET

    def handle_error(self, request, client_address):  # a scraper hanging up is not our error
        log.debug("metrics request from %s failed", client_address, exc_info=True)


class _V6Server(_V4Server):
    address_family = socket.AF_INET6
