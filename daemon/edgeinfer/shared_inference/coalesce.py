"""Merge the front-ends' batches into one runner call (inference host side).

Each front-end already batched its own requests (edgeinfer.batching, with its
fill delay, deadlines and queue bound). What arrives here are those batches,
one per channel call. A `Coalescer` runs them on `slots` threads, each taking
every queued batch that shares the oldest one's tensor signature, up to
max_batch rows, without waiting: while all slots compute, the queue fills, so
the next call is bigger (the same load-adaptive rule the front-end batcher
uses, without a timer, since the front-ends have already waited).

The merged rows are padded to the runner's bucket sizes here, once, not in
each front-end: the front-end's runner (RemoteRunner) says it pads itself.
"""
from __future__ import annotations

import collections
import logging
import threading
from typing import Callable, Mapping, Optional

import numpy as np

from ..backends.base import Runner
from ..batching import bucket_for, signature_of, stack_rows
from ..errors import InferenceError, ModelNotReady

log = logging.getLogger(__name__)


class _Call:
    __slots__ = ("feeds", "rows", "signature", "done", "outputs", "error", "seq", "ran_rows")

    def __init__(self, feeds: Mapping[str, np.ndarray], rows: int, seq: int):
        self.seq = seq  # arrival order: calls put back after a cut keep their place
        self.feeds = feeds
        self.rows = rows
        self.signature = signature_of(feeds)
        self.done = threading.Event()
        self.outputs: Optional[dict[str, np.ndarray]] = None
        self.ran_rows = rows  # real rows of the runner call it was part of
        self.error: Optional[BaseException] = None


class Coalescer:
    """Runs callers' batches on `runner`, merged; `run()` blocks the calling thread until its rows are done.

    Args:
        name: model name (logs, errors).
        runner: the host's runner for the model.
        max_batch: most rows per runner call (the front-ends use the same bound).
        buckets: batch sizes to pad to (edgeinfer.batching.batch_buckets of the real runner).
        on_batch: called with the rows of each runner call (metrics).
    """

    def __init__(self, name: str, runner: Runner, max_batch: int, buckets: list[int],
                 on_batch: Callable[[int], None] = lambda _n: None):
        self.name = name
        self.runner = runner
        self.max_batch = max(1, max_batch)
        self.buckets = buckets
        self.on_batch = on_batch
        self._queue: collections.deque[_Call] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._seq = 0
        n = max(1, int(runner.info.max_concurrency or 1))
        self._threads = [threading.Thread(target=self._slot, name=f"merge-{name}-{i}", daemon=True)
                         for i in range(n)]
        for t in self._threads:
            t.start()

    def run(self, feeds: Mapping[str, np.ndarray], rows: int) -> tuple[dict[str, np.ndarray], int]:
        """This caller's outputs (its `rows` rows) and the real rows of the runner call they ran in.

        Raises the runner's error, or ModelNotReady when closed."""
        with self._cond:
            self._seq += 1
            call = _Call(feeds, rows, self._seq)
            if self._closing:
                raise ModelNotReady(f"model {self.name!r} is shutting down in the inference process")
            self._queue.append(call)
            self._cond.notify()
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.outputs, call.ran_rows

    def _take_locked(self) -> list[_Call]:
        """The oldest call and the compatible calls after it, in arrival order, as many as pad least.

        With buckets, taking everything can cost more padding than it saves: three
        front-end batches of 6 rows make 18, padded to 32 (44% of the GPU's work
        wasted), where 12 rows run as 16 and the third batch goes to the next free
        slot as 8. So the batch is the prefix with the smallest padded share (the
        longest among equals).
        """
        head = self._queue.popleft()
        group, rows = [head], head.rows
        if head.signature is None:
            return group
        keep = collections.deque()
        while self._queue:
            c = self._queue.popleft()
            if c.signature == head.signature and rows + c.rows <= self.max_batch:
                group.append(c)
                rows += c.rows
            else:
                keep.append(c)
        if self.buckets and len(group) > 1:
            best, best_waste, total = 1, None, 0
            for i, c in enumerate(group):
                total += c.rows
                waste = 1.0 - total / bucket_for(total, self.buckets)
                if best_waste is None or waste <= best_waste + 1e-9:
                    best, best_waste = i + 1, waste
            group, rest = group[:best], group[best:]
            keep = collections.deque(sorted([*rest, *keep], key=lambda c: c.seq))
        self._queue = keep
        return group

    def _slot(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                group = self._take_locked()
            try:
                self._run(group)
            except BaseException as exc:  # noqa: BLE001 - every caller gets the error; the slot lives on
                err = exc if isinstance(exc, Exception) else InferenceError(repr(exc))
                for c in group:
                    c.error = err
            for c in group:
                c.done.set()

    def _run(self, group: list[_Call]) -> None:
        rows = sum(c.rows for c in group)
        target = bucket_for(rows, self.buckets)
        if len(group) == 1 and target == rows:
            feeds = group[0].feeds
        else:
            feeds = stack_rows([c.feeds for c in group], target)
        outputs = self.runner.infer(feeds)
        self.on_batch(rows)
        for c in group:
            c.ran_rows = rows
        if len(group) == 1 and target == rows:
            group[0].outputs = outputs
            return
        offset = 0
        for c in group:
            part = {}
            for name, arr in outputs.items():
                if arr.ndim == 0 or arr.shape[0] < rows:
                    raise InferenceError(f"output {name!r} has shape {list(arr.shape)}: cannot split "
                                         f"{rows} merged rows back per caller")
                part[name] = arr[offset:offset + c.rows]
            c.outputs = part
            offset += c.rows

    def close(self, timeout: float = 10.0) -> None:
        """Run what is queued, then stop the slots."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)
