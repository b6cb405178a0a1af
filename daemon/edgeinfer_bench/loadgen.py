"""Load generator: client processes that drive a gRPC target at a fixed concurrency.

The clients run in separate processes (multiprocessing, "spawn") so that they
never share the server's GIL, and each process runs a grpc.aio event loop with
its share of the concurrency as tasks, on one channel (`channels = "process"`:
the slots multiplex one HTTP/2 connection) or on a channel each (`"slot"`: one
connection per client, as separate client programs would open, in fewer
processes than clients). The load is closed-loop:
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
import contextlib
import multiprocessing as mp
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from edgeinfer_bench.placement import started_on
from edgeinfer_bench.stats import Summary, summarize

INFER_METHOD = "/edgeinfer.v1.Inference/Infer"
STREAM_METHOD = "/edgeinfer.v1.Inference/InferStream"
MODES = ("unary", "stream")
CHANNELS = ("process", "slot")
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
    cpus: frozenset = frozenset()   # where the client processes run (empty: anywhere; bench/placement.py)
    channels: str = "process"       # one connection per process, or one per slot (see the module doc)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.response_kind not in RESPONSE_KINDS:
            raise ValueError(f"response_kind must be one of {RESPONSE_KINDS}, got {self.response_kind!r}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.channels not in CHANNELS:
            raise ValueError(f"channels must be one of {CHANNELS}, got {self.channels!r}")
        if not self.requests:
            raise ValueError("no requests to send")

    def process_count(self) -> int:
        wanted = self.processes or min(self.concurrency, os.cpu_count() or 1)
        return max(1, min(wanted, self.concurrency))


@dataclass(frozen=True)
class ClientLayout:
    """How a point's clients are laid out: processes (0: min(concurrency, CPUs)) and channels per process."""

    processes: int = 0
    channels: str = "process"

    def describe(self) -> str:
        procs = self.processes or "min(concurrency, CPUs)"
        return f"{procs} processes, " + ("one connection each" if self.channels == "process"
                                         else "one connection per client")


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
        from edgeinfer_proto.edgeinfer.v1 import inference_pb2 as pb

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
    from edgeinfer_proto.edgeinfer.v1 import inference_pb2 as pb

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


async def _run_slice(spec: LoadSpec, lanes: list, counter, slot: int, share: int, base: int,
                     start_at: float, warmup_s: float, duration_s: float) -> dict:
    """One measured slice on open channels: `warmup_s` unmeasured from `start_at`, then `duration_s`.

    lanes: (channel, unary call or None) of each of the `share` slots (the same one for every slot
    with channels = "process").
    """
    rec = _Recorder(spec, counter, slot)
    rec.window_start = start_at + warmup_s
    rec.window_end = rec.window_start + duration_s
    while time.monotonic() < start_at:
        await asyncio.sleep(0.001)
    offsets = [base + k for k in range(share)]  # global slot n starts at request n
    if spec.mode == "unary":
        await asyncio.gather(*(_unary_slot(call, spec, rec, o) for (_, call), o in zip(lanes, offsets)))
    else:
        await asyncio.gather(*(_stream_slot(channel, spec, rec, o) for (channel, _), o in zip(lanes, offsets)))
    return {
        "slot": slot,
        "latencies": np.asarray(rec.latencies, dtype=np.float64).tobytes(),
        "errors": rec.errors,
        "first_errors": rec.first_errors,
        "response_bytes": rec.response_bytes,
        "responses": rec.responses,
        "timings": rec.timings,
    }


async def _child_main(slot: int, spec: LoadSpec, share: int, base: int, counter, conn) -> None:
    """Connect, say ready, then run one slice per ("slice", start_at, warmup_s, duration_s) until "stop".

    The channel stays open between slices: an interleaved benchmark alternates short
    slices of load on the daemon with slices on its ceiling, and reconnecting (or
    respawning the process) for each would cost more than the slice itself.
    """
    import grpc

    options = [("grpc.max_receive_message_length", _MAX_MESSAGE), ("grpc.max_send_message_length", _MAX_MESSAGE)]
    if spec.channels == "slot":
        # Without a local pool, channels with equal arguments share one subchannel (connection).
        options.append(("grpc.use_local_subchannel_pool", 1))
    first_errors: list[str] = []
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        lanes = []
        for _ in range(share if spec.channels == "slot" else 1):
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(spec.address, options=options))
            await asyncio.wait_for(channel.channel_ready(), timeout=spec.connect_timeout_s)
            call = channel.unary_unary(spec.method) if spec.mode == "unary" else None
            if call is not None:
                # One call before the clock starts: connection and HTTP/2 settings are set up.
                try:
                    await call(spec.requests[0], timeout=spec.call_timeout_s)
                except grpc.RpcError as exc:
                    first_errors.append(f"first call: {exc.code().name}: {exc.details()}")
            lanes.append((channel, call))
        lanes = (lanes * share)[:share]
        conn.send(("ready", slot))
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command[0] != "slice":
                return
            _, start_at, warmup_s, duration_s = command
            out = await _run_slice(spec, lanes, counter, slot, share, base, start_at, warmup_s, duration_s)
            out["first_errors"] = first_errors + out["first_errors"]
            first_errors = []
            conn.send(("result", out))


def _child(slot: int, spec: LoadSpec, share: int, base: int, counter, conn) -> None:
    from edgeinfer.process.eventloop import run

    try:
        run(_child_main(slot, spec, share, base, counter, conn), spec.loop)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the point
        try:
            conn.send(("fatal", {"slot": slot, "fatal": f"{type(exc).__name__}: {exc}"}))
        except OSError:
            pass


# -- parent ----------------------------------------------------------------------------

def _default_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class LoadClients:
    """The client processes of one point, connected once and driven slice by slice.

    `run_load` is one slice of a fresh set; the interleaved benchmark keeps a set
    open and alternates its slices with the ceiling's.

    Raises (from __enter__ and run_slice):
        RuntimeError: a client process could not connect or died.
    """

    def __init__(self, spec: LoadSpec):
        self.spec = spec
        self.processes = spec.process_count()
        self._shares = split(spec.concurrency, self.processes)
        self._procs: list = []
        self._conns: list = []
        self._counter = None
        self._fatal: list[str] = []

    def __enter__(self) -> "LoadClients":
        ctx = mp.get_context("spawn")
        self._counter = ctx.RawArray("q", self.processes)
        bases = [sum(self._shares[:i]) for i in range(self.processes)]
        for i in range(self.processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_child, args=(i, self.spec, self._shares[i], bases[i], self._counter, child),
                               name=f"edgeinfer-loadgen-{i}", daemon=True)
            with started_on(self.spec.cpus):
                proc.start()
            self._procs.append(proc)
            self._conns.append(parent)
        try:
            self._wait_ready(timeout=60)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(("stop",))
            except OSError:
                pass
        for p in self._procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
        self._procs, self._conns = [], []

    def _wait_ready(self, timeout: float) -> None:
        pending = set(range(self.processes))
        end = time.monotonic() + timeout
        while pending:
            for i in sorted(pending):
                if self._conns[i].poll(0.05):
                    what, value = self._receive(i)
                    if what == "fatal":
                        raise RuntimeError(f"{self.spec.label or self.spec.address}: client process failed: "
                                           f"{value['fatal']}")
                    pending.discard(i)
                elif not self._procs[i].is_alive():
                    raise RuntimeError(f"client process {i} exited with code {self._procs[i].exitcode}")
            if pending and time.monotonic() > end:
                raise RuntimeError(f"client processes {sorted(pending)} not ready after {timeout:.0f}s")

    def _receive(self, i: int):
        try:
            return self._conns[i].recv()
        except EOFError:
            raise RuntimeError(f"client process {i} died with exit code {self._procs[i].exitcode}") from None

    def run_slice(self, warmup_s: Optional[float] = None, duration_s: Optional[float] = None,
                  progress: Optional[Callable[[str], None]] = _default_progress,
                  on_start: Optional[Callable[[], None]] = None) -> LoadResult:
        """Release every client for `warmup_s` unmeasured + `duration_s` measured (the spec's by default).

        `on_start` is called when the clients are released (warm-up begins), e.g. to start a profiler.
        """
        spec = self.spec
        warmup_s = spec.warmup_s if warmup_s is None else warmup_s
        duration_s = spec.duration_s if duration_s is None else duration_s
        start_at = time.monotonic() + 0.05
        for conn in self._conns:
            conn.send(("slice", start_at, warmup_s, duration_s))
        if on_start is not None:
            on_start()
        _report_progress(spec, self._counter, start_at, warmup_s, duration_s, progress)
        results = self._collect(timeout=warmup_s + duration_s + spec.call_timeout_s + 30)
        fatal = [r["fatal"] for r in results if "fatal" in r]
        if fatal:
            raise RuntimeError(f"{spec.label or spec.address}: client process failed: {fatal[0]}")
        return _combine(spec, results, duration_s, self.processes)

    def _collect(self, timeout: float) -> list[dict]:
        results: dict[int, dict] = {}
        end = time.monotonic() + timeout
        while len(results) < self.processes:
            for i in range(self.processes):
                if i in results or not self._conns[i].poll(0.05):
                    continue
                _, out = self._receive(i)
                results[i] = out
            if len(results) < self.processes and time.monotonic() > end:
                raise RuntimeError(f"client processes did not report within {timeout:.0f}s") from None
            dead = [i for i, p in enumerate(self._procs) if i not in results and not p.is_alive()
                    and not self._conns[i].poll(0)]
            if dead:
                raise RuntimeError(f"client process {dead[0]} died with exit code {self._procs[dead[0]].exitcode}")
        return [results[i] for i in range(self.processes)]


def _combine(spec: LoadSpec, results: list[dict], duration_s: float, processes: int) -> LoadResult:
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
        summary=summarize(lat, duration_s, errors),
        latencies_s=lat,
        processes=processes,
        request_bytes=int(sum(len(r) for r in spec.requests) / len(spec.requests)),
        response_bytes=int(sum(r["response_bytes"] for r in results) / responses) if responses else 0,
        server_timing_us=server_timing,
        first_errors=[e for r in results for e in r["first_errors"]][:_FIRST_ERRORS],
    )


def run_load(spec: LoadSpec, progress: Optional[Callable[[str], None]] = _default_progress,
             on_start: Optional[Callable[[], None]] = None) -> LoadResult:
    """Run one point: start the client processes, measure one slice, stop them.

    Raises:
        RuntimeError: a client process could not connect or died.
    """
    with LoadClients(spec) as clients:
        return clients.run_slice(progress=progress, on_start=on_start)


def _report_progress(spec: LoadSpec, counter, start: float, warmup_s: float, duration_s: float,
                     progress) -> None:
    end = start + warmup_s + duration_s
    last_n, last_t = sum(counter), time.monotonic()
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
        phase = "warm-up" if now < start + warmup_s else "measuring"
        progress(f"[bench] {spec.label or spec.address}: {phase} {min(now - start, end - start):5.1f}/"
                 f"{end - start:.1f}s  {n} done  {rate:8.1f}/s")
        last_n, last_t = n, now
