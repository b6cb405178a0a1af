"""Merge the front-ends' batches into runner calls (inference host side).

Each front-end already batched its own requests (edgeinfer.serving.batching, with its
fill delay, deadlines and queue bound). What arrives here are those batches,
one per channel call. A `Coalescer` runs them on `slots` threads. A free slot
takes rows, oldest first, from every queued call that shares the oldest
one's tensor signature, up to max_batch rows, without waiting: while all
slots compute, the queue fills, so the next call is bigger (the same
load-adaptive rule as the front-end batcher, without a timer, since the
front-ends have already waited).

Rows, not calls, are the unit. With bucket sizes (ONNX Runtime on a GPU runs
a few fixed shapes, see edgeinfer.serving.batching) a slot pads the waiting rows up to
the next bucket unless more than `MAX_PADDED_SHARE` of it would be padding;
then it runs the largest bucket that the waiting rows fill exactly and leaves
the rest, in order, for the next free slot. A call whose rows were cut across
two runner calls is answered when its last row has run. The front-end's
runner (RemoteRunner) says the host pads, so front-ends send their rows
unpadded.

Padding is not free once the GPU is busy. On an H100 the host's calls
of ~5 rows padded to 8 take about what the ceiling's exact batches of 8 take,
and concluded that a call costs the same whatever its rows. Under full load the
padded rows do take GPU time: with the default power-of-two buckets merged calls
of 5-6 rows ran as 8 and 9-10 as 16. Denser buckets, `[batching] buckets = [2,
4, 5, 6, 7, 8, 9, 10, 11, 12, 16, 32]`, raised the daemon from 0.67-0.76 to
0.77-0.82 of the ceiling in three same-call comparisons (H200, ResNet-50, 32
clients; docs/decisions.md). The price is one ONNX
Runtime session per size and instance (OnnxRuntimeConfig.session_per_batch_size).
A 25% cut limit (cutting 5 rows into 4 + 1) measured no better than merging
whole calls.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from typing import Callable, Mapping, NamedTuple, Optional

import numpy as np

from edgeinfer.runtime.base import Runner
from edgeinfer.runtime.buckets import bucket_for
from edgeinfer.serving.batching import check_splittable, signature_of, stack_rows, start_slots
from edgeinfer.errors import InferenceError, ModelNotReady

log = logging.getLogger(__name__)

# Pad a batch up to the next bucket unless padding would be more than this share of it.
# With power-of-two buckets it never is (5 -> 8, 9 -> 16, 17 -> 32); with sparse
# configured buckets, e.g. [8, 32], 9 rows run as 8 now and 1 in the next call, not as 32.
MAX_PADDED_SHARE = 0.5


class Merged(NamedTuple):
    """What a caller gets back from Coalescer.run."""

    outputs: dict[str, np.ndarray]  # its own rows
    ran_rows: int                   # real rows of the (largest) runner call they ran in
    wait_s: float                   # queued until a slot took its first rows
    run_s: float                    # from then until its last rows had run


Done = Callable[[Optional[Merged], Optional[BaseException]], None]


class _Call:
    """One front-end batch: `rows` rows, run as one or more pieces."""

    __slots__ = ("feeds", "rows", "signature", "on_done", "finished", "ran_rows", "taken", "parts",
                 "finished_rows", "queued", "started", "ended")

    def __init__(self, feeds: Mapping[str, np.ndarray], rows: int, on_done: Done):
        self.feeds = feeds
        self.rows = rows
        self.signature = signature_of(feeds)
        self.on_done = on_done
        self.finished = False       # answered (outputs or error); set under the Coalescer's lock
        self.ran_rows = 0           # real rows of the (largest) runner call its rows ran in
        self.taken = 0              # rows handed to slots so far
        self.parts: list[tuple[int, dict[str, np.ndarray]]] = []  # (first row, outputs) per piece
        self.finished_rows = 0
        self.queued = time.perf_counter()
        self.started = self.ended = 0.0

    def piece(self, start: int, count: int) -> dict[str, np.ndarray]:
        if start == 0 and count == self.rows:
            return dict(self.feeds)
        return {name: arr[start:start + count] for name, arr in self.feeds.items()}


class Coalescer:
    """Runs callers' rows on `runner`, merged: `submit()` queues them and calls back when they have run
    (the inference host's link threads never wait); `run()` blocks until then.

    Args:
        name: model name (logs, errors).
        runner: the host's runner for the model.
        max_batch: most rows per runner call (the front-ends use the same bound).
        buckets: batch sizes to pad to (edgeinfer.serving.batching.batch_buckets of the real runner).
        on_batch: called with the real rows of each runner call (metrics).
        fill_rows, fill_delay_s: a free slot waits up to fill_delay_s (from the oldest
            waiting call's arrival) while fewer than fill_rows rows wait; 0 s = never waits.
    """

    def __init__(self, name: str, runner: Runner, max_batch: int, buckets: list[int],
                 on_batch: Callable[[int], None] = lambda _n: None, fill_rows: int = 1,
                 fill_delay_s: float = 0.0):
        self.name = name
        self.runner = runner
        self.max_batch = max(1, max_batch)
        self.buckets = buckets
        self.on_batch = on_batch
        self.fill_rows = min(max(1, fill_rows), self.max_batch)
        self.fill_delay_s = fill_delay_s
        self._queue: collections.deque[_Call] = collections.deque()  # calls with rows not yet taken
        self._cond = threading.Condition()
        self._closing = False
        self._threads = start_slots(self._slot, f"merge-{name}", int(runner.info.max_concurrency or 1))

    @property
    def slots(self) -> int:
        return len(self._threads)

    def submit(self, feeds: Mapping[str, np.ndarray], rows: int, on_done: Done) -> None:
        """Queue this caller's `rows` rows; `on_done(merged, None)` or `on_done(None, error)` follows once,
        on a slot thread (keep it short: it delays the slot's next batch). Raises ModelNotReady when closed."""
        call = _Call(feeds, rows, on_done)
        with self._cond:
            if self._closing:
                raise ModelNotReady(f"model {self.name!r} is shutting down in the inference process")
            self._queue.append(call)
            self._cond.notify()

    def run(self, feeds: Mapping[str, np.ndarray], rows: int) -> Merged:
        """Block until this caller's `rows` rows have run; raises the runner's error, or ModelNotReady
        when closed."""
        answer: Future = Future()
        self.submit(feeds, rows, lambda merged, error: answer.set_exception(error) if error is not None
                    else answer.set_result(merged))
        return answer.result()

    # -- forming a batch (under the lock) ------------------------------------------------------
    def _size_locked(self, available: int) -> int:
        """How many of the `available` waiting rows the next runner call takes."""
        if not self.buckets:
            return available
        up = bucket_for(available, self.buckets)
        if up - available <= MAX_PADDED_SHARE * up:
            return available
        return max((b for b in self.buckets if b <= available), default=available)

    def _take_locked(self) -> list[tuple[_Call, int, int]]:
        """Pieces (call, first row, rows) for the next runner call, oldest rows first."""
        head = self._queue[0]
        if head.signature is None:  # ragged batch axis: runs alone, whole
            self._queue.popleft()
            head.taken, head.started = head.rows, time.perf_counter()
            return [(head, 0, head.rows)]
        same = [c for c in self._queue if c.signature == head.signature]
        available = min(self.max_batch, sum(c.rows - c.taken for c in same))
        need = self._size_locked(available)
        pieces = []
        now = time.perf_counter()
        for c in same:
            if need == 0:
                break
            if c.taken == 0:
                c.started = now
            count = min(c.rows - c.taken, need)
            pieces.append((c, c.taken, count))
            c.taken += count
            need -= count
        self._queue = collections.deque(c for c in self._queue if c.taken < c.rows)
        return pieces

    def _waiting_rows_locked(self) -> int:
        head = self._queue[0]
        return sum(c.rows - c.taken for c in self._queue if c.signature == head.signature)

    def _slot(self) -> None:
        while True:
            with self._cond:
                while True:
                    if not self._queue:
                        if self._closing:
                            return
                        self._cond.wait()
                        continue
                    if self.fill_delay_s <= 0 or self._closing or self._waiting_rows_locked() >= self.fill_rows:
                        break
                    left = self._queue[0].queued + self.fill_delay_s - time.perf_counter()
                    if left <= 0:
                        break
                    self._cond.wait(left)  # woken by each new call
                pieces = self._take_locked()
            try:
                self._run(pieces)
            except BaseException as exc:  # noqa: BLE001 - every caller gets the error; the slot lives on
                err = exc if isinstance(exc, Exception) else InferenceError(repr(exc))
                self._fail({id(c): c for c, _s, _n in pieces}.values(), err)

    def _run(self, pieces: list[tuple[_Call, int, int]]) -> None:
        rows = sum(n for _c, _s, n in pieces)
        target = bucket_for(rows, self.buckets)
        if len(pieces) == 1 and target == rows:
            call, start, n = pieces[0]
            feeds = call.piece(start, n)
        else:
            feeds = stack_rows([c.piece(s, n) for c, s, n in pieces], target)
        outputs = self.runner.infer(feeds)
        ended = time.perf_counter()
        self.on_batch(rows)
        if len(pieces) == 1 and target == rows:  # one whole call, unpadded: its outputs as they are
            split = [outputs]
        else:
            if target != rows:
                outputs = {name: arr[:rows] for name, arr in outputs.items()}
            check_splittable(outputs, rows)
            split, offset = [], 0
            for _c, _s, n in pieces:
                split.append({name: arr[offset:offset + n] for name, arr in outputs.items()})
                offset += n
        finished = []
        with self._cond:
            for (c, start, n), part in zip(pieces, split):
                c.parts.append((start, part))
                c.finished_rows += n
                c.ran_rows = max(c.ran_rows, rows)
                c.ended = ended
                if c.finished_rows == c.rows and not c.finished:
                    c.finished = True
                    finished.append(c)
        for c in finished:
            if len(c.parts) == 1:
                outputs = c.parts[0][1]
            else:
                ordered = [p for _s, p in sorted(c.parts, key=lambda sp: sp[0])]
                outputs = {name: np.concatenate([p[name] for p in ordered]) for name in ordered[0]}
            _answer(c, Merged(outputs, c.ran_rows, c.started - c.queued, c.ended - c.started), None)

    def _fail(self, calls, err: BaseException) -> None:
        """Answer `calls` with `err` (a call cut across slots fails once, and its rows still queued go)."""
        with self._cond:
            failing = [c for c in calls if not c.finished]
            for c in failing:
                c.finished = True
            self._queue = collections.deque(c for c in self._queue if c not in failing)
        for c in failing:
            _answer(c, None, err)

    def close(self, timeout: float = 10.0) -> None:
        """Run what is queued, then stop the slots."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)


def _answer(call: _Call, merged: Optional[Merged], error: Optional[BaseException]) -> None:
    try:
        call.on_done(merged, error)
    except Exception:  # noqa: BLE001 - a caller's callback must not take the slot (or other callers) down
        log.exception("answering a merged call failed")
