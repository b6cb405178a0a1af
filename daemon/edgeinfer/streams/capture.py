"""Live-frame capture of one stream: a supervisor thread, one reader thread per connection.

The reader keeps only the newest frame (a 1-slot `Mailbox`): a frame that is
replaced before inference took it is counted as dropped for being late, so no
buffer grows and results are never seconds old. Frames are sampled to the
stream's `fps` before they reach the mailbox (`frames_skipped`).

The supervisor is the state machine:

    connecting -> live -> stalled -> reconnecting -> live ...
                    \\-> (source ended or failed) -> reconnecting
    any -> stopped   (daemon stopping, a file's end with loop = false, max_reconnects reached)

It never waits on OpenCV itself: a reader blocked in an open or read that does
not return (a driver, a backend without timeouts) is abandoned, its connection
is counted as failed, and a new reader opens the source again. The abandoned
reader exits and releases its capture whenever the call returns.
"""
from __future__ import annotations

import collections
import enum
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import numpy as np

from edgeinfer.config import StreamConfig
from edgeinfer.runtime.gpu.image_job import Nv12Surface
from edgeinfer.streams.decode import open_source
from edgeinfer.streams.sources import Source, SourceError, redact

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.5
_POLL_S = 0.05


class State(enum.Enum):
    CONNECTING = "connecting"
    LIVE = "live"
    STALLED = "stalled"
    RECONNECTING = "reconnecting"
    STOPPED = "stopped"


@dataclass
class Frame:
    index: int           # 0-based count of frames captured by this stream (all connections)
    pixels: Union[np.ndarray, Nv12Surface]  # BGR uint8 HxWx3, or NV12 that NVDEC left in GPU memory
    timestamp: float     # wall clock (time.time()) when it was read
    captured: float      # time.perf_counter() when it was read, for latency

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        if isinstance(self.pixels, np.ndarray):
            return self.pixels.shape[1], self.pixels.shape[0]
        return self.pixels.width, self.pixels.height

    @property
    def image(self) -> np.ndarray:
        """BGR uint8 HxWx3 on the host: a frame in GPU memory is copied down and converted once."""
        if isinstance(self.pixels, np.ndarray):
            return self.pixels
        return self.pixels.to_bgr()


class Mailbox:
    """One slot: put replaces, take empties. `dropped` counts frames replaced before anyone took them."""

    def __init__(self, on_put: Callable[[], None] = lambda: None):
        self._lock = threading.Lock()
        self._frame: Optional[Frame] = None
        self.dropped = 0
        self.on_put = on_put

    def put(self, frame: Frame) -> None:
        with self._lock:
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame
        self.on_put()

    def take(self) -> Optional[Frame]:
        with self._lock:
            frame, self._frame = self._frame, None
            return frame


class Rate:
    """Events per second over the last `window_s` seconds."""

    def __init__(self, window_s: float = 5.0):
        self.window_s = window_s
        self._times: collections.deque = collections.deque()
        self._lock = threading.Lock()

    def tick(self, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._times.append(now)
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()

    def per_second(self, now: Optional[float] = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            if len(self._times) < 2:
                return 0.0
            return (len(self._times) - 1) / max(1e-6, now - self._times[0]) if now > self._times[0] else 0.0


def backoff_delay(attempt: int, cap_s: float, rng: random.Random = random) -> float:
    """Seconds before reconnect attempt `attempt` (0-based): 0.5 s doubling, up to `cap_s`, with
    jitter (uniform in the upper half) so that many cameras behind one switch do not retry in step."""
    ceiling = min(cap_s, BACKOFF_BASE_S * (2 ** min(attempt, 30)))
    return rng.uniform(ceiling / 2, ceiling)


@dataclass
class _Connection:
    done: threading.Event = field(default_factory=threading.Event)
    abandoned: bool = False
    opened_at: Optional[float] = None
    last_frame: Optional[float] = None
    error: str = ""
    ended: bool = False   # a file's end with loop = false: stop, do not reconnect


class Capture:
    """Captures one stream on its own threads; `start()`, `stop()`.

    Args:
        cfg: the stream's config.
        on_frame: called from the reader thread after a frame went into `mailbox`.
        on_state: called (state, reason) from the supervisor thread on each change.
        opener: opens the source (sources.open_source; tests pass their own).
    """

    def __init__(self, cfg: StreamConfig, on_frame: Callable[[], None] = lambda: None,
                 on_state: Callable[[State, str], None] = lambda s, r: None,
                 opener: Callable[[StreamConfig], tuple[Source, str]] = open_source):
        self.cfg = cfg
        self.mailbox = Mailbox(on_frame)
        self.on_state = on_state
        self.opener = opener
        self.state = State.CONNECTING
        self.state_reason = "opening " + redact(cfg.source)
        self.last_error = ""
        self.decode = "cpu"
        self.decode_note = ""
        self.frames_in = 0
        self.frames_skipped = 0
        self.reconnects = 0
        self.state_changes: collections.Counter = collections.Counter({State.CONNECTING.value: 1})
        self.rate_in = Rate()
        self.latest: Optional[Frame] = None
        self.reader_tids: set[int] = set()  # native thread ids, for the benchmark's CPU accounting
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._rng = random.Random()

    # -- control ----------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._supervise, name=f"stream-{self.cfg.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def frames_dropped(self) -> int:
        return self.mailbox.dropped

    # -- state machine ------------------------------------------------------------------
    def _set_state(self, state: State, reason: str) -> None:
        if state is self.state and reason == self.state_reason:
            return
        changed = state is not self.state
        self.state, self.state_reason = state, reason
        if changed:
            self.state_changes[state.value] += 1
            level = logging.INFO if state in (State.LIVE, State.CONNECTING) else logging.WARNING
            log.log(level, "stream %s: %s%s", self.cfg.name, state.value, f" ({reason})" if reason else "")
            self.on_state(state, reason)

    def _supervise(self) -> None:
        cfg = self.cfg
        log.info("stream %s: %s (%s)", cfg.name, self.state.value, self.state_reason)
        attempt = 0
        while not self._stop.is_set():
            conn = _Connection()
            reader = threading.Thread(target=self._read, args=(conn,), name=f"capture-{cfg.name}", daemon=True)
            reader.start()
            outcome = self._watch(conn)
            conn.abandoned = True
            if self._stop.is_set():
                break
            if conn.ended:
                self._set_state(State.STOPPED, conn.error)
                return
            if conn.last_frame is not None:
                attempt = 0  # it was live: start the backoff again from the bottom
            self.last_error = outcome
            if cfg.max_reconnects and attempt >= cfg.max_reconnects:
                self._set_state(State.STOPPED, f"gave up after {attempt} reconnect attempts in a row "
                                               f"(max_reconnects); last error: {outcome}")
                return
            delay = backoff_delay(attempt, cfg.reconnect_max_s, self._rng)
            self._set_state(State.RECONNECTING, f"{outcome}; retrying in {delay:.1f} s")
            if self._stop.wait(delay):
                break
            attempt += 1
            self.reconnects += 1
        self._set_state(State.STOPPED, "the daemon is stopping")

    def _watch(self, conn: _Connection) -> str:
        """Wait for the connection to fail, stall or be stopped; returns why it ended."""
        stall = self.cfg.stall_timeout_s
        # A tenth of the stall timeout is precise enough, and keeps many idle supervisors from
        # waking the interpreter dozens of times a second each.
        poll = min(max(_POLL_S, stall / 10), 0.5)
        # The open may take a TCP probe and OpenCV's open, each bounded by stall_timeout_s.
        open_deadline = time.monotonic() + 2 * stall + 1.0
        while not self._stop.is_set():
            if conn.done.wait(poll):
                return conn.error or "the source ended"
            now = time.monotonic()
            last = conn.last_frame
            if last is None:
                if conn.opened_at is None:
                    if now > open_deadline:
                        return f"opening the source did not return within {2 * stall + 1:g} s"
                elif now - conn.opened_at > stall:
                    self._set_state(State.STALLED, f"opened, but no frame within {stall:g} s")
                    return f"stalled: opened, but no frame within {stall:g} s (stall_timeout_s)"
                continue
            if self.state is not State.LIVE and now - last < stall:
                self._set_state(State.LIVE, self.decode_note)
            if now - last > stall:
                self._set_state(State.STALLED, f"no frame for {stall:g} s")
                return f"stalled: no frame for {stall:g} s (stall_timeout_s)"
        return "stopped"

    # -- reader -------------------------------------------------------------------------
    def _read(self, conn: _Connection) -> None:
        self.reader_tids.add(threading.get_native_id())
        cfg = self.cfg
        try:
            source, note = self.opener(cfg)
        except SourceError as exc:
            conn.error = str(exc)
            conn.done.set()
            return
        except Exception as exc:  # noqa: BLE001 - whatever a backend raises ends this connection only
            conn.error = f"{redact(cfg.source)}: {type(exc).__name__}: {exc}"
            conn.done.set()
            return
        if conn.abandoned:
            source.close()
            return
        self.decode, self.decode_note = source.decode, note
        conn.opened_at = time.monotonic()
        # Files play at their own frame rate, like a camera; 0 = as fast as they decode.
        pace = 1.0 / source.native_fps if source.is_file and source.native_fps else 0.0
        sample = 1.0 / cfg.fps if cfg.fps > 0 else 0.0
        # Frames a little early still count as due: arrival jitter must not halve the rate.
        tolerance = min(sample, pace or sample) * 0.25
        next_due = 0.0
        next_play = time.perf_counter()
        try:
            while not conn.abandoned and not self._stop.is_set():
                try:
                    source.grab()
                except SourceError as exc:
                    if source.is_file and str(exc) == "end of file":
                        if not cfg.loop:
                            conn.ended, conn.error = True, "end of file (loop = false)"
                            return
                        if not source.rewind():
                            source.close()
                            source, _ = self.opener(cfg)
                        continue
                    conn.error = str(exc)
                    return
                if pace:
                    next_play += pace
                    delay = next_play - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    elif delay < -1.0:  # far behind (a slow disk): do not rush to catch up
                        next_play = time.perf_counter()
                now = time.perf_counter()
                if conn.abandoned:
                    return
                if conn.last_frame is None:  # live from its first frame, not from the supervisor's next look
                    self._set_state(State.LIVE, self.decode_note)
                conn.last_frame = time.monotonic()
                self.frames_in += 1
                self.rate_in.tick()
                if sample:
                    if now < next_due - tolerance:
                        self.frames_skipped += 1  # decoded, never converted or copied
                        continue
                    next_due = next_due + sample if next_due + sample > now else now + sample
                try:
                    image = source.retrieve()
                except SourceError as exc:
                    conn.error = str(exc)
                    return
                frame = Frame(self.frames_in - 1, image, time.time(), now)
                self.latest = frame
                self.mailbox.put(frame)
        except Exception as exc:  # noqa: BLE001 - as above
            conn.error = f"{redact(cfg.source)}: {type(exc).__name__}: {exc}"
        finally:
            try:
                source.close()
            finally:
                conn.done.set()
