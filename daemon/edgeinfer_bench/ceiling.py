"""The in-process ceiling: the served model called directly on threads, no gRPC.

The model is loaded exactly as the daemon loads it (`ServedModel.load()`:
ModelLoader's backend/precision chain, warm-up), and each request does what
the daemon's worker does (`ServedModel.predict`: decode, preprocess,
inference, postprocess) on the same inputs the load generator sends, decoded
by the daemon's own converter. What is left out is exactly the serving path:
gRPC, protobuf, the event loop and the hop to the worker pool.

With `batch` > 1 each thread decodes and preprocesses `batch` requests in
parallel on a shared pool of `pool` threads ([server] workers by default, as the
daemon's workers do; the bench can try several sizes and keep the best), stacks them into one runner call and postprocesses the batch as the
batcher does (ServedModel.finish_batch): the ceiling a batching daemon is
compared with. Such a point for concurrency c runs c // batch
threads, so it keeps c images in flight, as c clients do: in a closed loop
throughput is images in flight / latency, and a ceiling holding more images in
flight than the clients do measures a heavier load, not a faster path.

It runs in a child process so the benchmark's own threads and the earlier
targets' leftovers do not disturb it.
"""
from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from edgeinfer.serving.batching import stack_rows
from edgeinfer.config import ModelConfig, ServerConfig
from edgeinfer_bench.child import ChildServer, report_failure
from edgeinfer_bench.stats import Summary, summarize


@dataclass
class CeilingSpec:
    model: ModelConfig
    server: ServerConfig
    cache_dir: Optional[str]
    requests: list[bytes]          # serialized InferRequests, as the load generator sends them
    concurrency: list[int]
    duration_s: float
    warmup_s: float = 1.0
    batch: int = 1
    label: str = ""
    # Threads per point: min(concurrency, threads_cap); None = as many threads as clients.
    threads_cap: Optional[int] = None
    # batch > 1: threads that preprocess for the batches; None = [server] workers.
    pool: Optional[int] = None

    @property
    def pool_size(self) -> int:
        return self.pool or self.server.workers


@dataclass
class CeilingPoint:
    concurrency: int   # the client concurrency this point stands for
    batch: int
    summary: Summary
    latencies_s: np.ndarray
    # Mean per-request stage times (us) measured inside predict().
    stage_us: dict[str, float]
    threads: int = 0
    pool: int = 0      # batch > 1: preprocessing threads


def _one_batch(model, items, options, pool):
    """prepare the items on `pool`, one runner call for all, postprocess them as the batcher does."""
    runner = model.require_ready()
    prepared = list(pool.map(model.prepare, items))
    outputs = runner.infer(stack_rows([p.feeds for p in prepared], sum(p.batch for p in prepared)))
    for answer in model.finish_batch(outputs, [(p, options) for p in prepared]):
        if isinstance(answer, Exception):
            raise answer


def _run_point(model, items, options, concurrency: int, batch: int, duration_s: float,
               warmup_s: float, progress, pool=None) -> CeilingPoint:
    start = time.monotonic() + 0.05
    window_start, window_end = start + warmup_s, start + warmup_s + duration_s
    lats: list[list[float]] = [[] for _ in range(concurrency)]
    stages: list[list[tuple[int, int, int]]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    done = [0] * concurrency
    first_error: list[str] = []

    def worker(k: int) -> None:
        i = k  # slot k starts at image k, as in the load generator
        while time.monotonic() < start:
            time.sleep(0.0005)
        while time.monotonic() < window_end:
            sent = time.monotonic()
            try:
                if batch == 1:
                    pred = model.predict(items[i % len(items)], options)
                    timing = pred.timing
                else:
                    _one_batch(model, [items[(i + j) % len(items)] for j in range(batch)], options, pool)
                    timing = None
                ok = True
            except Exception as exc:  # noqa: BLE001 - counted, first one reported
                ok = False
                if not first_error:
                    first_error.append(f"{type(exc).__name__}: {exc}")
            finished = time.monotonic()
            i += batch
            done[k] += batch
            if window_start <= finished <= window_end:
                if ok:
                    lats[k].extend([finished - sent] * batch)
                    if timing is not None:
                        stages[k].append((timing.preprocess_us, timing.inference_us, timing.postprocess_us))
                else:
                    errors[k] += batch

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    last, last_t = 0, time.monotonic()
    while any(t.is_alive() for t in threads):
        time.sleep(1.0)
        if progress is not None and time.monotonic() < window_end:
            now, n = time.monotonic(), sum(done)
            phase = "warm-up" if now < window_start else "measuring"
            progress(f"{phase} {now - start:5.1f}/{window_end - start:.1f}s  {n} done  "
                     f"{(n - last) / max(now - last_t, 1e-9):8.1f}/s")
            last, last_t = n, now
    for t in threads:
        t.join()
    lat = np.asarray([x for per in lats for x in per], dtype=np.float64)
    st = [s for per in stages for s in per]
    stage_us = {}
    if st:
        mean = np.asarray(st, dtype=np.float64).mean(axis=0)
        stage_us = {"preprocess_us": float(mean[0]), "inference_us": float(mean[1]),
                    "postprocess_us": float(mean[2])}
    if first_error and not lat.size:
        raise RuntimeError(f"every ceiling request failed: {first_error[0]}")
    return CeilingPoint(concurrency, batch, summarize(lat, duration_s, sum(errors)), lat, stage_us)


def point_threads(concurrency: int, batch: int, threads_cap: Optional[int]) -> int:
    """Threads of a ceiling point that stands for `concurrency` clients (see the module's docstring)."""
    if batch > 1:  # c images in flight, as c clients keep
        return max(1, concurrency // batch)
    return min(concurrency, threads_cap) if threads_cap else concurrency


def _child(conn, spec: CeilingSpec) -> None:
    """Load the model once, then measure one point per ("point", ...) command until "stop"."""
    import logging

    from edgeinfer_proto.edgeinfer.v1 import inference_pb2 as pb

    from edgeinfer.model.served import ServedModel

    from edgeinfer.model.types import ModelState
    from edgeinfer.rpc.converters import request_input, request_options

    logging.basicConfig(level=logging.WARNING)
    pools: dict[int, ThreadPoolExecutor] = {}
    try:
        model = ServedModel(spec.model, spec.server, Path(spec.cache_dir) if spec.cache_dir else None)
        model.load()
        if model.state is not ModelState.READY:
            raise RuntimeError(f"model {spec.model.name} did not load: {model.state_reason}")
        msgs = [pb.InferRequest.FromString(r) for r in spec.requests]
        items = [request_input(m) for m in msgs]
        options = request_options(msgs[0])
        info = model.runner.info
        conn.send(("loaded", f"{info.backend}/{info.precision} on {info.device}"))
        while True:
            command = conn.recv()
            if command == "stop":  # ChildServer.stop
                break
            _, c, threads, batch, pool_size, duration_s, warmup_s, quiet = command
            pool = pools.setdefault(pool_size, ThreadPoolExecutor(max_workers=pool_size)) if batch > 1 else None
            label = f"[bench] {spec.label} ceiling c={c} threads={threads}" + (f" batch={batch}" if batch > 1 else "")

            def progress(line: str, _label=label) -> None:
                print(f"{_label}: {line}", file=sys.stderr, flush=True)

            point = _run_point(model, items, options, threads, batch, duration_s, warmup_s,
                               None if quiet else progress, pool)
            point.concurrency, point.threads = c, threads
            point.pool = pool_size if batch > 1 else 0
            conn.send(("point", point))
        for pool in pools.values():
            pool.shutdown()
        model.unload()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        report_failure(conn, exc)


class CeilingProcess(ChildServer):
    """The served model loaded once in a child process, measured point by point.

    `run_ceiling` measures a spec's points in one go; the interleaved benchmark
    keeps the process loaded (idle between points) and alternates short points
    with the daemon's slices, so both see the same machine. Started and stopped
    as the daemon and echo children are (bench/child.py).

    Raises:
        RuntimeError: the model did not load, the child failed or did not answer in `timeout_s`.
    """

    def __init__(self, spec: CeilingSpec, timeout_s: float = 900.0, cpus: frozenset[int] = frozenset()):
        super().__init__(cpus)
        self.spec = spec
        self.timeout_s = timeout_s
        self.device = ""

    def start(self) -> "CeilingProcess":
        name = self.spec.model.name
        what, value = self._spawn(_child, (self.spec,), "edgeinfer-bench-ceiling", self.timeout_s,
                                  f"ceiling for {name} did not load")
        if what != "loaded":
            raise self._failed(f"ceiling for {name}", value)
        self.device = value
        return self

    def _stop_timeout(self) -> float:
        return 30.0  # unloading a GPU model can take a while

    def point(self, concurrency: int, batch: Optional[int] = None, threads_cap: Optional[int] = None,
              pool: Optional[int] = None, duration_s: Optional[float] = None, warmup_s: Optional[float] = None,
              quiet: bool = False) -> CeilingPoint:
        """Measure one point (the spec's batch, cap, pool and durations unless given)."""
        spec = self.spec
        batch = spec.batch if batch is None else batch
        threads = point_threads(concurrency, batch, spec.threads_cap if threads_cap is None else threads_cap)
        pool_size = pool or spec.pool_size
        duration_s = spec.duration_s if duration_s is None else duration_s
        warmup_s = spec.warmup_s if warmup_s is None else warmup_s
        self._conn.send(("point", concurrency, threads, batch, pool_size, duration_s, warmup_s, quiet))
        name = spec.model.name
        if not self._conn.poll(self.timeout_s):
            raise RuntimeError(f"ceiling for {name} did not answer within {self.timeout_s:.0f}s")
        try:
            what, value = self._conn.recv()
        except EOFError:
            raise RuntimeError(f"ceiling for {name} died (exit code {self._proc.exitcode})") from None
        if what != "point":
            raise RuntimeError(f"ceiling for {name} failed: {value}")
        return value


def run_ceiling(spec: CeilingSpec, timeout_s: float = 900.0) -> tuple[str, list[CeilingPoint]]:
    """Load the model in a child process and measure every concurrency in `spec`.

    Returns:
        (what runs it, e.g. "onnxruntime/fp32 on cpu", one CeilingPoint per concurrency)
    Raises:
        RuntimeError: the model did not load or the child failed.
    """
    with CeilingProcess(spec, timeout_s) as ceiling:
        return ceiling.device, [ceiling.point(c) for c in spec.concurrency]
