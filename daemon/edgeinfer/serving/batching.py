"""Dynamic batching for one served model.

Requests arrive already decoded and preprocessed (the worker pool does that in
parallel with inference, see serving/lanes.py) and wait in a bounded queue.
Up to `max_concurrency` slot threads (ONNX Runtime: concurrent Run() on one
session; TensorRT: one execution context + stream each) take turns forming a
batch and running it:

* only one slot forms a batch at a time, and only a free slot forms one, so
  while every slot computes the queue grows and the next batch is larger
  (batch size adapts to load without a timer);
* a batch takes the oldest request and every queued request with the same
  non-batch shapes, dtypes and tensor names, up to `max_batch` rows;
* it waits at most `max_queue_delay_us` (from the oldest request's arrival)
  for the batch to fill, and only while more requests for the model are on
  their way (admitted, still being decoded): with nothing coming, waiting
  only adds latency (measured: -15% img/s at concurrency 1 with the 2 ms
  default), and under load the queue fills while the slots compute anyway;
* a batch that reaches a preferred size, or max_batch, or cannot grow (a
  compatible request would not fit) runs at once; when the delay expires with
  preferred sizes configured, the largest preferred size that fits runs and
  the rest goes first into the next batch;
* requests whose deadline passed, or whose caller went away, are dropped
  before compute (a dropped deadline is counted);
* outputs are split back per request along the batch axis and each request is
  postprocessed with its own Transform and Options, on the slot thread, all
  rows in one call where the model family can (classification: one softmax and
  one sort for the batch). Postprocessing is small-array numpy and Python that
  holds the GIL: fanning it out to more threads buys hops, not speed, and
  per-row calls were the bottleneck (H200, ResNet-50, 32-row batches: ~1 ms a
  row under GIL contention, a slot spending more time there than in inference).

A failing batch answers each of its requests with the error; a slot never dies
on an exception. `close()` drains what is queued, then stops the slots.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from edgeinfer.runtime.base import Runner
from edgeinfer.runtime.buckets import batch_buckets, bucket_for
from edgeinfer.config import BatchingConfig
from edgeinfer.errors import DeadlineExpired, InferenceError, ModelNotReady
from edgeinfer.model.served import ServedModel
from edgeinfer.model.types import Prediction, Prepared, Timing
from edgeinfer.model.families.postprocess import Options

log = logging.getLogger(__name__)

Deliver = Callable[[Optional[Prediction], Optional[BaseException]], None]


def elapsed_us(seconds: float) -> int:
    """A stage's duration for metrics and Timing: whole microseconds, never negative."""
    return max(0, int(seconds * 1e6))


def stack_rows(parts: Sequence[Mapping[str, np.ndarray]], target: int) -> dict[str, np.ndarray]:
    """Stack each feed of `parts` along the batch axis into one array of `target` rows.

    Rows past the parts' own are padding: copies of the last real row (numerically
    ordinary; their outputs are dropped). One allocation and one copy per feed,
    where concatenating and then padding copied a batch twice.
    """
    out = {}
    for name in parts[0]:
        first = parts[0][name]
        arr = np.empty((target,) + first.shape[1:], first.dtype)
        offset = 0
        for p in parts:
            n = p[name].shape[0]
            arr[offset:offset + n] = p[name]
            offset += n
        if offset < target:
            arr[offset:] = arr[offset - 1]
        out[name] = arr
    return out


def check_splittable(outputs: Mapping[str, np.ndarray], rows: int) -> None:
    """Raise InferenceError unless every output has `rows` rows to hand back per request."""
    for name, arr in outputs.items():
        if arr.ndim == 0 or arr.shape[0] != rows:
            raise InferenceError(f"output {name!r} has shape {list(arr.shape)}: cannot split a batch of "
                                 f"{rows} rows back per request (no batch dimension)")


def start_slots(target: Callable[[], None], name: str, n: int) -> list[threading.Thread]:
    """`n` daemon threads named name-0.. running `target`: the slots of a batcher (or the shared
    inference host's coalescer), one runner call in flight each."""
    threads = [threading.Thread(target=target, name=f"{name}-{i}", daemon=True) for i in range(max(1, n))]
    for t in threads:
        t.start()
    return threads


def signature_of(feeds: Mapping[str, np.ndarray]) -> Optional[tuple]:
    """What must be equal for two requests to share a batch; None = cannot share (ragged batch axis)."""
    if any(a.ndim == 0 for a in feeds.values()) or len({a.shape[0] for a in feeds.values()}) > 1:
        return None
    return tuple((name, feeds[name].shape[1:], feeds[name].dtype.str) for name in sorted(feeds))


class QueueGate:
    """Admission bound: at most `limit` requests admitted and not yet running.

    Admitted = accepted by the pipeline, then preprocessed, then waiting for its
    batch. Released exactly once per admitted request: when it starts to run, is
    dropped, or fails before reaching the queue.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self._n = 0
        self._lock = threading.Lock()

    def admit(self) -> bool:
        with self._lock:
            if self._n >= self.limit:
                return False
            self._n += 1
            return True

    def release(self, n: int = 1) -> None:
        with self._lock:
            self._n = max(0, self._n - n)

    @property
    def depth(self) -> int:
        return self._n


@dataclass(eq=False)
class Pending:
    """One request waiting in the batch queue."""

    prepared: Prepared
    options: Options
    submitted: float        # perf_counter when the request entered the pipeline
    picked: float           # when a worker started preprocessing it
    enqueued: float         # when it entered the batch queue (preprocessed)
    expires: Optional[float]
    deliver: Deliver        # thread-safe: hands the answer to the waiting caller
    abandoned: Callable[[], bool] = lambda: False  # the caller is gone (cancelled)

    def __post_init__(self) -> None:
        self.signature = signature_of(self.prepared.feeds)
        self.rows = max(1, int(self.prepared.batch))


class Batcher:
    """Forms and runs batches for one model on `slots` threads.

    Args:
        model: the served model (prepare/finish, name, readiness).
        runner: the runner batches execute on (its max_concurrency sets the slots).
        max_batch: rows per batch (see effective_max_batch).
        cfg: the model's [batching] table (delay, preferred sizes).
        gate: the model's admission gate; released when requests leave the queue.
        on_batch / on_deadline: metrics hooks (batch rows; a dropped request).
    """

    def __init__(self, model: ServedModel, runner: Runner, max_batch: int, cfg: BatchingConfig,
                 gate: QueueGate, on_batch: Callable[[int], None] = lambda _n: None,
                 on_deadline: Callable[[], None] = lambda: None, slots: Optional[int] = None,
                 progress=None):
        self.model = model
        self.runner = runner
        self.max_batch = max(1, max_batch)
        self.delay_s = cfg.max_queue_delay_us / 1e6
        self.preferred = sorted({s for s in cfg.preferred_batch_sizes if 1 <= s <= self.max_batch})
        self.buckets = batch_buckets(cfg, runner, self.max_batch)
        self.gate = gate
        self.on_batch = on_batch
        self.on_deadline = on_deadline
        # serving.progress.InferenceProgress: each batch is registered while it runs (the watchdog).
        self.progress = progress
        self._queue: collections.deque[Pending] = collections.deque()
        self._cond = threading.Condition()
        self._forming = threading.Lock()
        self._closing = False
        n = slots if slots is not None else int(runner.info.max_concurrency or 1)
        self._threads = start_slots(self._slot, f"batch-{model.name}", n)

    @property
    def slots(self) -> int:
        return len(self._threads)

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- producer side (worker threads) ---------------------------------------------
    def put(self, item: Pending) -> None:
        """Queue a preprocessed request (any thread)."""
        with self._cond:
            if not self._closing:
                self._queue.append(item)
                self._cond.notify()
                return
        self.gate.release()
        item.deliver(None, ModelNotReady(f"model {self.model.name!r} is shutting down"))

    # -- slots ------------------------------------------------------------------------
    def _slot(self) -> None:
        while True:
            with self._forming:
                batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            except BaseException as exc:  # noqa: BLE001 - a slot must survive anything
                log.exception("model %s: batch failed unexpectedly", self.model.name)
                for p in batch:
                    p.deliver(None, exc if isinstance(exc, Exception) else InferenceError(repr(exc)))

    def _reap_locked(self, now: float) -> None:
        """Drop expired and abandoned requests from the queue (answering the expired ones)."""
        if not any(p.abandoned() or (p.expires is not None and now > p.expires) for p in self._queue):
            return
        keep = collections.deque()
        for p in self._queue:
            if p.expires is not None and now > p.expires:
                self.gate.release()
                self.on_deadline()
                p.deliver(None, DeadlineExpired(
                    f"the request's deadline passed after {elapsed_us(now - p.submitted) / 1000:.1f} ms "
                    f"waiting for a batch of model {self.model.name!r}; it was not run"))
            elif p.abandoned():
                self.gate.release()
            else:
                keep.append(p)
        self._queue = keep

    def _group_locked(self, head: Pending) -> tuple[list[Pending], int, bool]:
        """Head plus compatible requests in arrival order, up to max_batch rows.

        Returns (group, rows, full) where full means the batch cannot grow.
        """
        group, rows = [head], head.rows
        if head.signature is None or rows >= self.max_batch:
            return group, rows, True
        for p in list(self._queue)[1:]:
            if p.signature != head.signature:
                continue
            if rows + p.rows > self.max_batch:
                return group, rows, True  # a compatible request waits that does not fit
            group.append(p)
            rows += p.rows
            if rows == self.max_batch:
                return group, rows, True
        return group, rows, False

    def _cut_to_preferred(self, group: list[Pending]) -> list[Pending]:
        """The longest prefix whose rows are a preferred size; the whole group if none is."""
        best, rows = None, 0
        for i, p in enumerate(group):
            rows += p.rows
            if rows in self.preferred:
                best = i + 1
        return group[:best] if best else group

    def _next_batch(self) -> Optional[list[Pending]]:
        with self._cond:
            while True:
                now = time.perf_counter()
                self._reap_locked(now)
                if not self._queue:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                head = self._queue[0]
                group, rows, full = self._group_locked(head)
                fill_by = head.enqueued + self.delay_s
                timed_out = now >= fill_by
                # Admitted requests not in the queue yet are being decoded: worth waiting for.
                incoming = self.gate.depth > len(self._queue)
                if incoming and not (full or timed_out or self._closing or rows in self.preferred):
                    # Wake on a new request (notify) or when the oldest has waited long enough.
                    wait = fill_by - now
                    nearest = min((p.expires for p in self._queue if p.expires is not None), default=None)
                    if nearest is not None:
                        wait = min(wait, max(0.0, nearest - now) + 1e-4)
                    self._cond.wait(wait)
                    continue
                if not full and self.preferred:
                    group = self._cut_to_preferred(group)
                taken = set(map(id, group))
                self._queue = collections.deque(p for p in self._queue if id(p) not in taken)
                self.gate.release(len(group))
                return group

    def _run(self, batch: Sequence[Pending]) -> None:
        if self.progress is None:
            return self._run_batch(batch)
        with self.progress.running(self.model.name, f"batch of {len(batch)}"):
            return self._run_batch(batch)

    def _run_batch(self, batch: Sequence[Pending]) -> None:
        start = time.perf_counter()
        runner = self.model.runner
        if runner is None or runner is not self.runner:
            err = ModelNotReady(f"model {self.model.name!r} is {self.model.state.value}: {self.model.state_reason}")
            for p in batch:
                p.deliver(None, err)
            return
        rows = sum(p.rows for p in batch)
        try:
            target = bucket_for(rows, self.buckets)
            if len(batch) == 1 and target == rows:
                feeds = batch[0].prepared.feeds
            else:
                feeds = stack_rows([p.prepared.feeds for p in batch], target)
            outputs = runner.infer(feeds)
            ran_rows = runner.rows_in_last_call() or rows
            if self.buckets:
                outputs = {name: arr[:rows] for name, arr in outputs.items()}
            if len(batch) > 1:
                check_splittable(outputs, rows)
        except Exception as exc:  # noqa: BLE001 - every request of the batch gets the error
            for p in batch:
                p.deliver(None, exc)
            return
        done = time.perf_counter()
        self.on_batch(rows)
        info = runner.info
        answers = self.model.finish_batch(outputs, [(p.prepared, p.options) for p in batch])
        finished = time.perf_counter()
        for p, answer in zip(batch, answers):
            if isinstance(answer, Exception):  # this request's postprocess failed: its own error
                p.deliver(None, answer)
                continue
            timing = Timing(
                # Waiting for a worker before preprocess + waiting for the batch to run.
                queue_us=elapsed_us(p.picked - p.submitted) + elapsed_us(start - p.enqueued),
                preprocess_us=p.prepared.preprocess_us,
                # The whole batch's run and postprocessing: what this request waited on.
                inference_us=elapsed_us(done - start),
                postprocess_us=elapsed_us(finished - done),
                total_us=elapsed_us(finished - p.submitted),
                batch_size=ran_rows)
            p.deliver(Prediction(answer, timing, p.prepared.image_size, info.backend, info.precision), None)

    # -- shutdown ------------------------------------------------------------------------
    def close(self, timeout: float = 10.0) -> None:
        """Stop accepting, run what is queued (no fill delay), stop the slots.

        Requests still queued after `timeout` (a runner that hangs) are answered
        with ModelNotReady rather than left waiting.
        """
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))
        with self._cond:
            left, self._queue = list(self._queue), collections.deque()
        if left:
            log.warning("model %s: %d queued request(s) not run before shutdown", self.model.name, len(left))
            self.gate.release(len(left))
            err = ModelNotReady(f"model {self.model.name!r} shut down before the request ran")
            for p in left:
                p.deliver(None, err)
