"""Whether inference makes progress: what the systemd watchdog is fed by.

Every runner call the pipeline makes (a worker's unbatched request, a batcher
slot's batch) is registered here while it runs. Inference is stalled when one
call has run longer than the bound ([server] watchdog_stall_s): a hung GPU
call, a deadlocked runtime; or when requests have waited longer than the bound
while no runner call started or finished for as long (a wedged batcher or
worker pool: nothing runs at all). A long queue is not a stall as long as
calls keep finishing; nor is a daemon with nothing to do.

Read from the event loop without waiting for any worker: a check that had to
queue behind the requests (as a no-op job on the worker pool did) made a busy
daemon look hung (24 streams on the demo model: no answer for 100 s).
"""
from __future__ import annotations

import itertools
import threading
import time
from contextlib import contextmanager
from typing import Iterator, Optional


class InferenceProgress:
    """Runner calls in flight, by start time; thread-safe and cheap (one lock, one dict entry a call)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[int, tuple[str, str, float]] = {}
        self._ids = itertools.count()
        self.finished = 0  # runner calls completed (any outcome)
        self.last_change = time.monotonic()  # a runner call started or finished

    @contextmanager
    def running(self, model: str, what: str = "request") -> Iterator[None]:
        """Wrap one runner call of `model` ("request" or "batch of N")."""
        token = next(self._ids)
        now = time.monotonic()
        with self._lock:
            self._running[token] = (model, what, now)
            self.last_change = now
        try:
            yield
        finally:
            with self._lock:
                del self._running[token]
                self.finished += 1
                self.last_change = time.monotonic()

    def oldest(self) -> Optional[tuple[str, str, float]]:
        """(model, what, seconds running) of the longest-running call, or None when none runs."""
        with self._lock:
            if not self._running:
                return None
            model, what, started = min(self._running.values(), key=lambda e: e[2])
        return model, what, time.monotonic() - started

    def stalled(self, bound_s: float, oldest_waiting_s: float = 0.0, waiting: int = 0) -> Optional[str]:
        """Why inference is stalled, or None. `waiting` requests are in the pipeline, the oldest for
        `oldest_waiting_s`: a stall too when they wait past the bound and no call started or finished
        for as long."""
        oldest = self.oldest()
        if oldest is not None and oldest[2] > bound_s:
            model, what, seconds = oldest
            return (f"model {model}: a {what} has been running for {seconds:.0f} s "
                    f"(> [server] watchdog_stall_s {bound_s:g})")
        idle = time.monotonic() - self.last_change
        if waiting and oldest_waiting_s > bound_s and idle > bound_s:
            return (f"{waiting} request(s) waiting, the oldest for {oldest_waiting_s:.0f} s, and no runner call "
                    f"started or finished for {idle:.0f} s (> [server] watchdog_stall_s {bound_s:g})")
        return None
