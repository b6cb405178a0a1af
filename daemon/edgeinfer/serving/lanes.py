"""Where a request's work runs: off the event loop, on the worker pool and batch slots.

Each model gets a lane, made on its first request once it is ready:

* max batch 1 (the default, and any model without a dynamic batch axis): one
  hop to a worker thread that decodes, preprocesses, infers and postprocesses
  in one go. Fewest thread switches, which matters for tiny models.
* the same, inline: tensor requests to a model whose batch-1 inference took
  less than [server] inline_max_us at warm-up run on the event loop thread,
  with no hop at all. The hop (submit, wake a worker, wake the loop again)
  costs more than such a model; the loop is held for about that long.
* max batch > 1: a worker thread decodes and preprocesses (in parallel with the
  inference of earlier requests), then hands the tensors to the model's
  `Batcher`, whose slot threads stack compatible requests, infer, split and
  postprocess (see edgeinfer.serving.batching).

Workers are threads, not processes: OpenCV decode/resize and numpy release the
GIL, and a process pool pickles every preprocessed tensor back (3.7 MB for one
640x480 float32 image). Measured on the 2-core dev box, decode of a 1280x960
JPEG + full preprocess, images/s, best of 3 (the box was shared, load 4-7, so
the absolute figures are low; the ordering held in every run):
    640x480 letterbox: 1 thread 37, 2 threads 85, 4 threads 142 | 2 processes 35, 4 processes 39
    224x224 crop:      1 thread 56, 2 threads 84, 4 threads 107 | 2 processes 74, 4 processes 93
Every lane has a bounded admission queue ([models.X.batching] max_queue): a
request over the bound is refused at once with RESOURCE_EXHAUSTED, before any
decode work is spent on it.
"""
from __future__ import annotations

import asyncio
import enum
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from edgeinfer.runtime.base import Runner
from edgeinfer.runtime.base import check_feeds
from edgeinfer.runtime.buckets import effective_max_batch
from edgeinfer.serving.batching import Batcher, Pending, QueueGate
from edgeinfer.serving.progress import InferenceProgress
from edgeinfer.errors import DeadlineExpired, QueueFull
from edgeinfer.model.served import ServedModel
from edgeinfer.model.types import ModelInput, Prediction, Tensors
from edgeinfer.model.families.postprocess import Options

log = logging.getLogger(__name__)


class Route(enum.Enum):
    """The way a model's requests run, chosen once when the model (or its new runner) is ready."""

    INLINE = "inline"  # tensors at batch 1 run on the event loop thread (images still hop to a worker)
    WORKER = "worker"  # one hop to a worker thread: decode, preprocess, infer, postprocess
    BATCHED = "batched"  # a worker decodes and preprocesses; the model's Batcher stacks and runs


class _Lane:
    """One model's admission gate and, when batching, its batcher; `inline`: tensors run on the loop."""

    def __init__(self, runner: Runner, gate: QueueGate, max_batch: int, batcher: Optional[Batcher],
                 inline: bool = False):
        self.runner = runner
        self.gate = gate
        self.max_batch = max_batch
        self.batcher = batcher
        self.inline = inline
        # Requests in run() on this lane (event loop only): a lane replaced by a reload is closed
        # once the last of them is answered, never before (its batcher would refuse their rows).
        self.active = 0
        self.retired = False
        self.closed = threading.Event()

    @property
    def route(self) -> Route:
        if self.batcher is not None:
            return Route.BATCHED
        return Route.INLINE if self.inline else Route.WORKER


def _settle(fut: asyncio.Future, pred: Optional[Prediction], exc: Optional[BaseException]) -> None:
    if fut.done():  # the caller was cancelled meanwhile
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(pred)


class InferencePipeline:
    """Runs requests for every model; `metrics` (edgeinfer.observe.metrics.Metrics) is optional."""

    def __init__(self, workers: int, metrics=None, inline_max_us: int = 0):
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="infer")
        self.metrics = metrics
        self.inline_max_us = inline_max_us
        self._lanes: dict[str, _Lane] = {}
        # Lanes replaced (reload) or drained whose requests are still being answered.
        self._retiring: set[_Lane] = set()
        self._in_flight: dict[str, int] = {}
        self._closed = False
        # Runner calls in flight: the watchdog's measure of progress (serving/progress.py).
        self.progress = InferenceProgress()
        # Admitted requests not answered yet, by entry time (event loop only): how long the oldest waits.
        self._admitted: dict[int, float] = {}
        self._admissions = 0

    # -- observability --------------------------------------------------------------
    def queue_depths(self) -> dict[str, int]:
        return {name: lane.gate.depth for name, lane in list(self._lanes.items())}

    def in_flight(self) -> dict[str, int]:
        return dict(self._in_flight)

    def record_cancelled(self, model: str, remaining_s: Optional[float]) -> None:
        """Count a request whose call ended before its answer: DEADLINE_EXCEEDED when its deadline
        had passed, else CANCELLED. `remaining_s` is asked of the call itself: our own elapsed time
        against the budget read earlier can come up microseconds short of what gRPC enforced."""
        expired = remaining_s is not None and remaining_s <= 1e-3
        self.record(model, "DEADLINE_EXCEEDED" if expired else "CANCELLED")

    def record(self, model: str, code: str) -> None:
        """Count one finished request by gRPC status name (called by the servicer)."""
        if self.metrics is not None:
            self.metrics.observe_request(model, code)

    def _deadline_expired(self, model: str) -> None:
        if self.metrics is not None:
            self.metrics.observe_deadline_expired(model)

    def batcher(self, name: str) -> Optional[Batcher]:
        """The model's batcher (None when it runs unbatched or has had no request yet)."""
        lane = self._lanes.get(name)
        return lane.batcher if lane else None

    def max_batch(self, model: ServedModel) -> int:
        """The batch size the model is served with (0 while it has no runner)."""
        lane, runner = self._lanes.get(model.name), model.runner
        if lane is not None and lane.runner is runner:
            return lane.max_batch
        return effective_max_batch(model.cfg.batching, runner) if runner is not None else 0

    # -- lanes ----------------------------------------------------------------------
    def lane(self, model: ServedModel) -> _Lane:
        """The model's lane for its current runner: its route, gate and batcher, made here, once per
        runner (the daemon asks as soon as the model is ready; a request asks if it comes first).

        Raises:
            ModelNotReady: the model has no runner.
        """
        runner = model.require_ready()
        lane = self._lanes.get(model.name)
        if lane is None or lane.runner is not runner:
            lane = self._new_lane(model, runner)
        return lane

    def _new_lane(self, model: ServedModel, runner: Runner) -> _Lane:
        """A new lane for the model's current runner (when it became ready, or after a reload)."""
        old = self._lanes.get(model.name)
        if old is not None:  # the model was reloaded: retire the old lane once its requests are answered
            self._retire(old)
        cfg = model.cfg.batching
        max_batch = effective_max_batch(cfg, runner, model.name)
        gate = QueueGate(cfg.max_queue)
        batcher = None
        if max_batch > 1:
            on_batch = on_deadline = None
            if self.metrics is not None:
                name, metrics = model.name, self.metrics
                on_batch = lambda n: metrics.observe_batch(name, n)  # noqa: E731
                on_deadline = lambda: metrics.observe_deadline_expired(name)  # noqa: E731
            batcher = Batcher(model, runner, max_batch, cfg, gate,
                              on_batch=on_batch or (lambda _n: None), on_deadline=on_deadline or (lambda: None),
                              progress=self.progress)
            log.info("model %s: batching up to %d, %d us fill delay, %d slot(s), queue bound %d",
                     model.name, max_batch, cfg.max_queue_delay_us, batcher.slots, cfg.max_queue)
        fast = model.warm_infer_us is not None and model.warm_infer_us < self.inline_max_us
        lane = _Lane(runner, gate, max_batch, batcher, inline=batcher is None and fast)
        if lane.inline:
            log.info("model %s: tensor requests run inline on the event loop (warm-up inference %.0f us "
                     "< [server] inline_max_us %d)", model.name, model.warm_infer_us, self.inline_max_us)
        self._lanes[model.name] = lane
        return lane

    def stalled(self, bound_s: float) -> Optional[str]:
        """Why inference is stalled (serving/progress.py), or None; event loop only."""
        oldest = min(self._admitted.values(), default=None)
        waiting_s = time.monotonic() - oldest if oldest is not None else 0.0
        return self.progress.stalled(bound_s, waiting_s, len(self._admitted))

    def _retire(self, lane: _Lane) -> None:
        """Stop giving the lane new requests; close it when the last one it has is answered."""
        lane.retired = True
        if lane.active:
            self._retiring.add(lane)
        else:
            self._close_lane(lane)

    def _close_lane(self, lane: _Lane) -> None:
        self._retiring.discard(lane)
        if lane.batcher is None:
            lane.closed.set()
            return

        def close() -> None:
            try:
                lane.batcher.close()
            finally:
                lane.closed.set()

        # Its own thread: the worker pool may be busy with a queue of other requests.
        threading.Thread(target=close, name="retire-lane", daemon=True).start()

    async def drain(self, model: ServedModel, timeout: float) -> bool:
        """Answer every request that runs on `model`'s current runner, then close its lane. New
        requests must already go elsewhere (a reload swapped the model in the registry, or it was
        removed). Returns False when requests were still running after `timeout` seconds."""
        runner = model.runner
        lanes = [lane for lane in [*self._lanes.values(), *self._retiring] if lane.runner is runner]
        for lane in lanes:
            if self._lanes.get(model.name) is lane:
                del self._lanes[model.name]
            if not lane.retired:
                self._retire(lane)
        end = time.monotonic() + timeout
        while any(not lane.closed.is_set() for lane in lanes) and time.monotonic() < end:
            await asyncio.sleep(0.01)
        return all(lane.closed.is_set() for lane in lanes)

    # -- requests -------------------------------------------------------------------
    async def run(self, model: ServedModel, item: ModelInput, options: Options,
                  deadline_s: Optional[float] = None) -> Prediction:
        """Run one request; event loop thread only.

        Raises:
            ModelNotReady, QueueFull (RESOURCE_EXHAUSTED), DeadlineExpired, InvalidInput,
            InferenceError: as domain errors, translated at the gRPC edge.
        """
        lane = self.lane(model)
        name = model.name
        # Batch 1 only: the warm-up measured batch 1, a bigger batch can take far longer.
        if lane.inline and isinstance(item, Tensors) and item.rows <= 1:
            # Runs now, on this thread: it never waits, so it takes no place in the queue.
            pred = model.predict(item, options)
            if self.metrics is not None:
                self.metrics.observe_timing(name, pred.timing)
            return pred
        submitted = time.perf_counter()
        expires = submitted + deadline_s if deadline_s is not None else None
        if not lane.gate.admit():
            if self.metrics is not None:
                self.metrics.observe_queue_full(name)
            raise QueueFull(f"model {name!r} has {lane.gate.limit} requests waiting "
                            f"([models.{name}.batching] max_queue); try again later")
        self._in_flight[name] = self._in_flight.get(name, 0) + 1
        lane.active += 1
        self._admissions += 1
        token = self._admissions
        self._admitted[token] = time.monotonic()
        try:
            if lane.batcher is None:
                pred = await self._direct(model, lane, item, options, submitted, expires)
            else:
                pred = await self._batched(model, lane, item, options, submitted, expires)
        finally:
            del self._admitted[token]
            self._in_flight[name] -= 1
            lane.active -= 1
            if lane.retired and not lane.active:
                self._close_lane(lane)
        if self.metrics is not None:
            self.metrics.observe_timing(name, pred.timing)
        return pred

    async def _direct(self, model: ServedModel, lane: _Lane, item: ModelInput, options: Options,
                      submitted: float, expires: Optional[float]) -> Prediction:
        def work() -> Prediction:
            started = time.perf_counter()
            lane.gate.release()
            if expires is not None and started > expires:
                self._deadline_expired(model.name)
                raise DeadlineExpired("the request's deadline passed while it waited for a worker; it was not run")
            with self.progress.running(model.name):
                pred = model.predict(item, options)
            pred.timing.queue_us = int((started - submitted) * 1e6)
            pred.timing.total_us += pred.timing.queue_us
            return pred

        cf = self.executor.submit(work)
        try:
            return await asyncio.wrap_future(cf)
        except asyncio.CancelledError:
            if cf.cancel():  # never started: give its place back
                lane.gate.release()
            raise

    async def _batched(self, model: ServedModel, lane: _Lane, item: ModelInput, options: Options,
                       submitted: float, expires: Optional[float]) -> Prediction:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        batcher = lane.batcher

        def deliver(pred: Optional[Prediction], exc: Optional[BaseException]) -> None:
            try:
                loop.call_soon_threadsafe(_settle, fut, pred, exc)
            except RuntimeError:  # loop closed: nobody is waiting any more
                pass

        def work() -> None:
            picked = time.perf_counter()
            if fut.done():  # cancelled while waiting for a worker
                lane.gate.release()
                return
            if expires is not None and picked > expires:
                lane.gate.release()
                self._deadline_expired(model.name)
                deliver(None, DeadlineExpired("the request's deadline passed while it waited for a worker; "
                                              "it was not run"))
                return
            try:
                prepared = model.prepare(item)
                check_feeds(lane.runner.inputs, prepared.feeds)
            except Exception as exc:  # noqa: BLE001 - answered to this request only
                lane.gate.release()
                deliver(None, exc)
                return
            batcher.put(Pending(prepared, options, submitted, picked, time.perf_counter(), expires,
                                deliver, fut.done))

        cf = self.executor.submit(work)
        try:
            return await fut
        except asyncio.CancelledError:
            if cf.cancel():
                lane.gate.release()
            raise

    def close(self, timeout: float = 10.0) -> None:
        """Drain every batcher (what is queued still runs), then stop the workers."""
        if self._closed:
            return
        self._closed = True
        end = time.monotonic() + timeout
        for lane in [*self._lanes.values(), *self._retiring]:
            if lane.batcher is not None:
                lane.batcher.close(max(0.0, end - time.monotonic()))
        self.executor.shutdown(wait=False, cancel_futures=True)
