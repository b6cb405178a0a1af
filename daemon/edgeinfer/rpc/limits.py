"""Per-client bounds at the gRPC edge: a request rate per client address, InferStream calls per
connection, and logging of client-caused errors at most once per interval per kind."""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Optional

from edgeinfer.errors import InvalidInput, LimitExceeded

MAX_TRACKED = 10_000  # client addresses kept by the rate limiter (oldest dropped first)


def client_address(peer: str) -> str:
    """"ipv4:10.0.0.7:53122" -> "ipv4:10.0.0.7"; "ipv6:[::1]:5312" -> "ipv6:[::1]" (one client, any port)."""
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() and host.count(":") >= 1 else peer


class RateLimiter:
    """A token bucket per client address: `rate` requests a second, `burst` at once."""

    def __init__(self, rate: float, burst: int):
        self.rate = rate
        self.burst = float(burst)
        self._buckets: "collections.OrderedDict[str, list[float]]" = collections.OrderedDict()

    def take(self, peer: str, now: Optional[float] = None) -> None:
        """Raises LimitExceeded (RESOURCE_EXHAUSTED) when `peer`'s client is over its rate. Event loop only."""
        now = time.monotonic() if now is None else now
        key = client_address(peer)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [self.burst, now]
            if len(self._buckets) > MAX_TRACKED:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        if bucket[0] < 1.0:
            raise LimitExceeded(f"client {key} is over its rate of {self.rate:g} requests/s "
                                f"([limits] rate_per_client); slow down")
        bucket[0] -= 1.0


class StreamSlots:
    """InferStream calls open per connection (peer address with its port)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._open: dict[str, int] = {}

    def acquire(self, peer: str) -> None:
        """Raises LimitExceeded when the connection already has `limit` streams open. Event loop only."""
        n = self._open.get(peer, 0)
        if n >= self.limit:
            raise LimitExceeded(f"this connection has {n} InferStream calls open, the limit "
                                f"([limits] max_streams_per_connection); end one or open another connection")
        self._open[peer] = n + 1

    def release(self, peer: str) -> None:
        n = self._open.get(peer, 0) - 1
        if n > 0:
            self._open[peer] = n
        else:
            self._open.pop(peer, None)


class ThrottledLog:
    """Logs a kind of message at most once per `interval_s`, saying how many were left out."""

    def __init__(self, logger: logging.Logger, interval_s: float):
        self.log = logger
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = collections.Counter()

    def __call__(self, level: int, kind: str, message: str, *args, exc_info=None) -> bool:
        """Log `message % args` unless `kind` was logged within the interval; True when logged."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.interval_s:
                self._skipped[kind] += 1
                return False
            skipped = self._skipped.pop(kind, 0)
            self._last[kind] = now
        if skipped:
            message += f" ({skipped} more like it in the last {self.interval_s:g}s not logged)"
        self.log.log(level, message, *args, exc_info=exc_info)
        return True


def capped_deadline(remaining: Optional[float], max_deadline_s: Optional[float]) -> Optional[float]:
    """A call's time left, at most [limits] max_deadline_s (None: no limit): a call with no deadline,
    or a longer one, gets the limit."""
    if max_deadline_s is not None and (remaining is None or remaining > max_deadline_s):
        return max_deadline_s
    return remaining


def check_arrays(arrays: dict, max_tensor_bytes: int = 0, max_rows: int = 0) -> None:
    """[limits] max_tensor_bytes (all inputs together) and max_batch_rows (each input's first
    dimension) on decoded inputs; 0 = no limit. Raises InvalidInput naming the limit."""
    if max_tensor_bytes:
        total = sum(int(a.nbytes) for a in arrays.values())
        if total > max_tensor_bytes:
            raise InvalidInput(f"inputs: {total} bytes, over the limit of {max_tensor_bytes} ([limits] max_tensor_bytes)")
    if max_rows:
        for name, a in arrays.items():
            if a.ndim and a.shape[0] > max_rows:
                raise InvalidInput(f"input {name!r}: {a.shape[0]} rows, over the limit of {max_rows} "
                                   f"([limits] max_batch_rows)")
