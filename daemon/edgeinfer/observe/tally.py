"""Request-path counters and histograms that cost almost nothing per request.

prometheus_client's Counter.inc and Histogram.observe take a lock and walk
the buckets on every call: with a counter and five stage histograms per
request that was ~25 us of the trivial model's ~120 us per request on the
event loop (cProfile, dev box), the single largest item after ONNX Runtime.
Here the request path only appends a row under one uncontended lock; the rows
are folded into bucket counts with numpy when Prometheus scrapes, or whenever
`FOLD_EVERY` rows have piled up, so memory stays bounded without scrapes.

The exposition is the same as prometheus_client's own instruments would give
(names, labels, cumulative `le` buckets, `_sum`, `_count`), produced by a
custom collector registered in the daemon's registry.
"""
from __future__ import annotations

import bisect
import threading
from typing import Iterable, Sequence

import numpy as np
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

# Rows kept before they are folded on the request path (one numpy pass per this many requests).
FOLD_EVERY = 1024


class Histograms:
    """A histogram family over fixed buckets: one series per label tuple, many values per row.

    `columns` names what one row holds, e.g. the five request stages; each
    column becomes the last label value of its own series.
    """

    def __init__(self, bounds: Sequence[float], columns: int = 1):
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self._bound_list = [float(b) for b in bounds]
        self.columns = columns
        # label tuple -> (counts [columns, buckets + 1], sums [columns])
        self.series: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def _series(self, key: tuple) -> tuple[np.ndarray, np.ndarray]:
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = (np.zeros((self.columns, len(self.bounds) + 1), np.int64),
                                    np.zeros(self.columns, np.float64))
        return s

    def fold(self, key: tuple, rows: np.ndarray) -> None:
        """Add `rows` ([n, columns] values) to the series `key`."""
        counts, sums = self._series(key)
        # side="left": bucket i counts bounds[i-1] < v <= bounds[i], Prometheus' `le`.
        idx = np.searchsorted(self.bounds, rows, side="left")
        width = len(self.bounds) + 1
        for c in range(self.columns):
            counts[c] += np.bincount(idx[:, c], minlength=width)
        sums += rows.sum(axis=0)

    def add(self, key: tuple, value: float) -> None:
        """One value (single-column families)."""
        counts, sums = self._series(key)
        counts[0, bisect.bisect_left(self._bound_list, value)] += 1
        sums[0] += value

    def family(self, name: str, doc: str, labels: list[str], column_values: Sequence[str] = ()) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(name, doc, labels=labels)
        for key, (counts, sums) in sorted(self.series.items()):
            for c in range(self.columns):
                cumulative = np.cumsum(counts[c])
                buckets = [(floatToGoString(b), int(n)) for b, n in zip(self.bounds, cumulative[:-1])]
                buckets.append(("+Inf", int(cumulative[-1])))
                values = list(key) + ([column_values[c]] if column_values else [])
                fam.add_metric(values, buckets, float(sums[c]))
        return fam


class RequestTally:
    """Counters, per-stage latency and batch-size histograms of one daemon; a Prometheus collector.

    Thread-safe: the event loop, worker threads and batch slots all record.
    Every method on the request path is a dict update or a list append.
    """

    def __init__(self, latency_bounds: Sequence[float], stages: Sequence[str], batch_bounds: Sequence[float]):
        self.stages = tuple(stages)
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str], int] = {}
        self._deadline: dict[str, int] = {}
        self._queue_full: dict[str, int] = {}
        self._pending: dict[str, list] = {}
        self._pending_n = 0
        self._latency = Histograms(latency_bounds, len(self.stages))
        self._batch = Histograms(batch_bounds)

    # -- request path -----------------------------------------------------------
    def request(self, model: str, code: str) -> None:
        key = (model, code)
        with self._lock:
            self._requests[key] = self._requests.get(key, 0) + 1

    def timing(self, model: str, row: tuple) -> None:
        """`row`: one value per stage, in microseconds (exported in seconds)."""
        with self._lock:
            self._add_row_locked(model, row)

    def ok(self, model: str, row: tuple) -> None:
        """`request(model, "OK")` and `timing(model, row)` under one lock (the inline short path)."""
        key = (model, "OK")
        with self._lock:
            self._requests[key] = self._requests.get(key, 0) + 1
            self._add_row_locked(model, row)

    def _add_row_locked(self, model: str, row: tuple) -> None:
        rows = self._pending.get(model)
        if rows is None:
            rows = self._pending[model] = []
        rows.append(row)
        self._pending_n += 1
        if self._pending_n >= FOLD_EVERY:
            self._fold_locked()

    def batch(self, model: str, size: int) -> None:
        with self._lock:
            self._batch.add((model,), float(size))

    def deadline_expired(self, model: str) -> None:
        with self._lock:
            self._deadline[model] = self._deadline.get(model, 0) + 1

    def queue_full(self, model: str) -> None:
        with self._lock:
            self._queue_full[model] = self._queue_full.get(model, 0) + 1

    def declare(self, models: Iterable[str]) -> None:
        """Zero series from the start for each model (rate() needs a first sample)."""
        with self._lock:
            for m in models:
                self._requests.setdefault((m, "OK"), 0)
                self._deadline.setdefault(m, 0)
                self._queue_full.setdefault(m, 0)

    def _fold_locked(self) -> None:
        for model, rows in self._pending.items():
            if rows:
                self._latency.fold((model,), np.asarray(rows, dtype=np.float64) / 1e6)
        self._pending = {}
        self._pending_n = 0

    # -- exposition -------------------------------------------------------------------
    def describe(self):
        return list(self._families())

    def collect(self):
        with self._lock:
            self._fold_locked()
            return self._families()

    def _families(self) -> list:
        requests = CounterMetricFamily("edgeinfer_requests", "Finished inference requests (unary calls and "
                                       "stream frames) by model and gRPC status code.", labels=["model", "code"])
        for (model, code), n in sorted(self._requests.items()):
            requests.add_metric([model, code], n)
        deadline = CounterMetricFamily("edgeinfer_deadline_expired", "Requests dropped before compute because "
                                       "their deadline passed.", labels=["model"])
        full = CounterMetricFamily("edgeinfer_queue_full", "Requests refused with RESOURCE_EXHAUSTED because "
                                   "the model's queue was full.", labels=["model"])
        for fam, counts in ((deadline, self._deadline), (full, self._queue_full)):
            for model, n in sorted(counts.items()):
                fam.add_metric([model], n)
        latency = self._latency.family(
            "edgeinfer_request_latency_seconds",
            "Per-request time by stage: queue (waiting for a worker and for its batch to run), preprocess, "
            "inference (the batch it ran in), postprocess, total.", ["model", "stage"], self.stages)
        batch = self._batch.family("edgeinfer_batch_size", "Requests (tensor rows) per executed batch.", ["model"])
        return [requests, latency, batch, deadline, full]
