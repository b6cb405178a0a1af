"""Load generator: client processes that drive a gRPC target at a fixed concurrency.

The clients run in separate processes (multiprocessing, "spawn") so that they
never share the server's GIL, and each process runs a grpc.aio event loop with
its share of the concurrency as tasks on one channel. The load is closed-loop:
each of the `concurrency` slots sends its next request when the previous one
answers (unary), or keeps `stream_window` frames in flight on its own stream.

Measurement window: all processes start together, run `warmup_s` unmeasured,
then `duration_s` measured. A request counts when it *completes* inside the
window (whenever it was sent): in steady state that estimates throughput
without the bias of dropping requests that straddle the window's edges, which
matters when one request takes a good part of a second.

Requests are pre-serialized bytes sent through a method with no serializer,
so the same code drives the daemon and the bare echo server.
"""
from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import queue as queue_mod
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from .stats import Summary, summarize

INFER_METHOD = "/edgeinfer.v1.Inference/Infer"
STREAM_METHOD = "/edgeinfer.v1.Inference/InferStream"
MODES = ("unary", "stream")
# How responses are read: "infer" (InferResponse), "stream" (StreamResponse), "none" (opaque bytes).
RESPONSE_KINDS = ("infer", "stream", "none")
_MAX_MESSAGE = 64 * 1024 * 1024
_FIRST_ERRORS = 5
_STREAM_GRACE_S = 0.5


@dataclass
class LoadSpec:
    """One measured point of client load."""

    address: str
    method: str
    mode: str
    requests: list[bytes]
    concurrency: int
    duration_s: float
    warmup_s: float = 1.0
    stream_window: int = 16
    processes: int = 0           # 0: min(concurrency, CPU count)
    loop: str = "asyncio"
    response_kind: str = "none"
    # Parse every Nth response's server-side Timing (0: never). Sampling keeps
    # the client's parsing cost out of the measurement.
    timing_sample_every: int = 10
    label: str = ""
    call_timeout_s: float = 120.0
    connect_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.response_kind not in RESPONSE_KINDS:
            raise ValueError(f"response_kind must be one of {RESPONSE_KINDS}, got {self.response_kind!r}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if not self.requests:
            raise ValueError("no requests to send")

    def process_count(self) -> int:
        wanted = self.processes or min(self.concurrency, os.cpu_count() or 1)
        return max(1, min(wanted, self.concurrency))


@dataclass
class LoadResult:
    summary: Summary
    latencies_s: np.ndarray
    processes: int
    request_bytes: int
    response_bytes: int
    # Mean server-side timing (us) from sampled responses: queue, preprocess, inference, postprocess, total;
    # and batch_size, the mean rows of the runner call a sampled request ran in.
    server_timing_us: dict[str, float] = field(default_factory=dict)
    first_errors: list[str] = field(default_factory=list)


def split(total: int, parts: int) -> list[int]:
    """`total` slots over `parts` processes, as evenly as possible (first ones get the extra)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


# -- child process ---------------------------------------------------------------

class _Recorder:
    """Per-process tallies; only completions inside [window_start, window_end] count."""

    def __init__(self, spec: LoadSpec, counter, slot: int):
        self.spec = spec
        self.counter = counter
        self.slot = slot
        self.window_start = 0.0
        self.window_end = 0.0
        self.latencies: list[float] = []
        self.errors = 0
        self.first_errors: list[str] = []
        self.response_bytes = 0
        self.responses = 0
        self.timings: list[tuple[int, int, int, int, int]] = []

    def in_window(self, t: float) -> bool:
        return self.window_start <= t <= self.window_end

    def ok(self, sent: float, done: float, raw: bytes) -> None:
        self.counter[self.slot] += 1
        if not self.in_window(done):
            return
        self.latencies.append(done - sent)
        self.response_bytes += len(raw)
        self.responses += 1
        every = self.spec.timing_sample_every
        if every and self.spec.response_kind != "none" and self.responses % every == 0:
            self._sample_timing(raw)

    def error(self, done: float, message: str) -> None:
        self.counter[self.slot] += 1
        if not self.in_window(done):
            return
        self.errors += 1
        if len(self.first_errors) < _FIRST_ERRORS:
            self.first_errors.append(message)

    def _sample_timing(self, raw: bytes) -> None:
        from edgeinfer_client._proto.edgeinfer.v1 import inference_pb2 as pb

        if self.spec.response_kind == "stream":
            msg = pb.StreamResponse.FromString(raw)
            if msg.WhichOneof("result") != "response":
                return
            t = msg.response.timing
        else:
            t = pb.InferResponse.FromString(raw).timing
        self.timings.append((t.queue_us, t.preprocess_us, t.inference_us, t.postprocess_us, t.total_us,
                             t.batch_size or 1))


def _stream_error(raw: bytes) -> Optional[str]:
    """The error a StreamResponse carries, or None."""
    from edgeinfer_client._proto.edgeinfer.v1 import inference_pb2 as pb

    msg = pb.StreamResponse.FromString(raw)
    if msg.WhichOneof("result") == "error":
        return f"{msg.error.code}: {msg.error.message}"
    return None


async def _unary_slot(call, spec: LoadSpec, rec: _Recorder, offset: int) -> None:
    import grpc

    reqs = spec.requests
    i = offset
    while time.monotonic() < rec.window_end:
        req = reqs[i % len(reqs)]
        i += 1
        sent = time.monotonic()
        try:
            raw = await call(req, timeout=spec.call_timeout_s)
        except grpc.RpcError as exc:
            rec.error(time.monotonic(), f"{exc.code().name}: {exc.details()}")
            continue
        rec.ok(sent, time.monotonic(), raw)


async def _stream_slot(channel, spec: LoadSpec, rec: _Recorder, offset: int) -> None:
    import grpc

    call = channel.stream_stream(spec.method)(timeout=spec.call_timeout_s)
    window = asyncio.Semaphore(spec.stream_window)
    sent_at: deque[float] = deque()
    parse_errors = spec.response_kind == "stream"

    async def writer() -> None:
        reqs = spec.requests
        i = offset
        while time.monotonic() < rec.window_end:
            await window.acquire()
            sent_at.append(time.monotonic())
            await call.write(reqs[i % len(reqs)])
            i += 1
        await call.done_writing()

    async def reader() -> None:
        while True:
            raw = await call.read()
            if raw is grpc.aio.EOF:
                return
            done = time.monotonic()
            sent = sent_at.popleft()
            window.release()
            problem = _stream_error(raw) if parse_errors else None
            if problem:
                rec.error(done, problem)
            else:
                rec.ok(sent, done, raw)

    # Frames still in flight when the window closes are not measured; with a
    # slow model a full window can take many seconds to drain, so the stream
    # is cancelled shortly after the window instead of waiting for them.
    budget = max(0.0, rec.window_end - time.monotonic()) + _STREAM_GRACE_S
    try:
        await asyncio.wait_for(asyncio.gather(writer(), reader()), timeout=budget)
    except asyncio.TimeoutError:
        call.cancel()
    except grpc.RpcError as exc:
        rec.error(time.monotonic(), f"stream: {exc.code().name}: {exc.details()}")


async def _child_main(slot: int, spec: LoadSpec, share: int, base: int, counter, events, start_at) -> dict:
    import grpc

    ready_q, go = events
    options = [("grpc.max_receive_message_length", _MAX_MESSAGE), ("grpc.max_send_message_length", _MAX_MESSAGE)]
    rec = _Recorder(spec, counter, slot)
    async with grpc.aio.insecure_channel(spec.address, options=options) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=spec.connect_timeout_s)
        if spec.mode == "unary":
            call = channel.unary_unary(spec.method)
            # One call before the clock starts: connection and HTTP/2 settings are set up.
            try:
                await call(spec.requests[0], timeout=spec.call_timeout_s)
            except grpc.RpcError as exc:
                rec.first_errors.append(f"first call: {exc.code().name}: {exc.details()}")
        ready_q.put(("ready", slot))
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        rec.window_start = start_at.value + spec.warmup_s
        rec.window_end = rec.window_start + spec.duration_s
        while time.monotonic() < start_at.value:
            await asyncio.sleep(0.001)
        offsets = [base + k for k in range(share)]  # global slot n starts at request n
        if spec.mode == "unary":
            await asyncio.gather(*(_unary_slot(call, spec, rec, o) for o in offsets))
        else:
            await asyncio.gather(*(_stream_slot(channel, spec, rec, o) for o in offsets))
    return {
        "slot": slot,
        "latencies": np.asarray(rec.latencies, dtype=np.float64).tobytes(),
        "errors": rec.errors,
        "first_errors": rec.first_errors,
        "response_bytes": rec.response_bytes,
        "responses": rec.responses,
        "timings": rec.timings,
    }


def _child(slot: int, spec: LoadSpec, share: int, base: int, counter, ready_q, go, start_at, result_q) -> None:
    from ..eventloop import run

    try:
        out = run(_child_main(slot, spec, share, base, counter, (ready_q, go), start_at), spec.loop)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the point
        ready_q.put(("failed", slot))
        result_q.put({"slot": slot, "fatal": f"{type(exc).__name__}: {exc}"})
        return
    result_q.put(out)


# -- parent ----------------------------------------------------------------------------

def _default_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_load(spec: LoadSpec, progress: Optional[Callable[[str], None]] = _default_progress,
             on_start: Optional[Callable[[], None]] = None) -> LoadResult:
    """Run one point: start the client processes, measure, collect.

    `on_start` is called when the clients are released (warm-up begins), e.g. to start a profiler.

    Raises:
        RuntimeError: a client process could not connect or died.
    """
    ctx = mp.get_context("spawn")
    procs_n = spec.process_count()
    shares = split(spec.concurrency, procs_n)
    counter = ctx.RawArray("q", procs_n)
    ready_q, result_q = ctx.Queue(), ctx.Queue()
    go = ctx.Event()
    start_at = ctx.RawValue("d", 0.0)
    bases = [sum(shares[:i]) for i in range(procs_n)]
    procs = [ctx.Process(target=_child, args=(i, spec, shares[i], bases[i], counter, ready_q, go, start_at, result_q),
                         name=f"edgeinfer-loadgen-{i}", daemon=True) for i in range(procs_n)]
    for p in procs:
        p.start()
    try:
        all_ready = _wait_ready(ready_q, procs, timeout=60)
        start_at.value = time.monotonic() + 0.05
        go.set()
        if on_start is not None:
            on_start()
        if all_ready:
            _report_progress(spec, counter, start_at.value, progress)
        results = _collect(result_q, procs, timeout=spec.call_timeout_s + 30)
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
    fatal = [r["fatal"] for r in results if "fatal" in r]
    if fatal:
        raise RuntimeError(f"{spec.label or spec.address}: client process failed: {fatal[0]}")
    lat = np.concatenate([np.frombuffer(r["latencies"], dtype=np.float64) for r in results])
    errors = sum(r["errors"] for r in results)
    responses = sum(r["responses"] for r in results)
    timings = [t for r in results for t in r["timings"]]
    server_timing = {}
    if timings:
        arr = np.asarray(timings, dtype=np.float64).mean(axis=0)
        server_timing = dict(zip(("queue_us", "preprocess_us", "inference_us", "postprocess_us", "total_us",
                                  "batch_size"),
                                 (float(v) for v in arr)))
        server_timing["samples"] = len(timings)
    return LoadResult(
        summary=summarize(lat, spec.duration_s, errors),
        latencies_s=lat,
        processes=procs_n,
        request_bytes=int(sum(len(r) for r in spec.requests) / len(spec.requests)),
        response_bytes=int(sum(r["response_bytes"] for r in results) / responses) if responses else 0,
        server_timing_us=server_timing,
        first_errors=[e for r in results for e in r["first_errors"]][:_FIRST_ERRORS],
    )


def _wait_ready(ready_q, procs, timeout: float) -> bool:
    """True when every client connected; False when one failed (its result says why)."""
    pending = set(range(len(procs)))
    end = time.monotonic() + timeout
    while pending:
        try:
            what, slot = ready_q.get(timeout=0.5)
        except queue_mod.Empty:
            if time.monotonic() > end:
                raise RuntimeError(f"client processes {sorted(pending)} not ready after {timeout:.0f}s") from None
            dead = [i for i in pending if not procs[i].is_alive()]
            if dead:
                raise RuntimeError(f"client process {dead[0]} exited with code {procs[dead[0]].exitcode}") from None
            continue
        if what == "failed":
            return False
        pending.discard(slot)
    return True


def _report_progress(spec: LoadSpec, counter, start: float, progress) -> None:
    end = start + spec.warmup_s + spec.duration_s
    last_n, last_t = 0, time.monotonic()
    while True:
        now = time.monotonic()
        if now >= end:
            break
        time.sleep(min(1.0, max(0.0, end - now)))
        if progress is None:
            continue
        now = time.monotonic()
        n = sum(counter)
        rate = (n - last_n) / max(now - last_t, 1e-9)
        phase = "warm-up" if now < start + spec.warmup_s else "measuring"
        progress(f"[bench] {spec.label or spec.address}: {phase} {min(now - start, end - start):5.1f}/"
                 f"{end - start:.1f}s  {n} done  {rate:8.1f}/s")
        last_n, last_t = n, now


def _collect(result_q, procs, timeout: float) -> list[dict]:
    results: list[dict] = []
    end = time.monotonic() + timeout
    while len(results) < len(procs):
        try:
            results.append(result_q.get(timeout=0.5))
        except queue_mod.Empty:
            if time.monotonic() > end:
                raise RuntimeError(f"client processes did not report within {timeout:.0f}s") from None
            have = {r["slot"] for r in results}
            dead = [i for i, p in enumerate(procs) if i not in have and not p.is_alive() and p.exitcode]
            if dead:
                raise RuntimeError(f"client process {dead[0]} died with exit code {procs[dead[0]].exitcode}") from None
    return results
