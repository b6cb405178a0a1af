"""Front-end side: the link to the inference host, and a Runner that calls through it.

A front-end's models load by asking the host to describe them (which waits
while the host loads); each ready model gets a `RemoteRunner` with the host
runner's tensor specs and info. Everything above the runner (lanes, batching,
deadlines, postprocessing, metrics, gRPC errors) is the standalone daemon's
code, unchanged.

A `HostLink` carries every call of the process on one connection: a caller
takes a shared buffer from the link's pool (a new one, 1.5x the size of one it
replaces, is handed to the host as an fd), writes its rows, sends a small
message with a call id and waits, without the GIL, for the link's reader
thread to hand it the host's answer. Any number of calls can be in flight; how
many a model keeps there is its batcher's slots (`RemoteRunner`'s
max_concurrency).

The caller's thread (a batcher slot) is woken by the reader and postprocesses
the batch itself. Postprocessing on the reader thread instead was measured,
one wake-up fewer on the answer's way back: it lost ~0.045 of the in-process
ceiling (H100, ResNet-50, 32 clients), as the reader then postprocesses one
batch at a time while the front-end's other answers wait behind it.

Why one multiplexed connection and not a connection per call in flight
(an earlier design): the host then needed a thread per connection, 8 per model and
front-end, blocked in recv; 6 front-ends meant 48 threads in the host and a
ceiling of 8 calls in flight per front-end. Now the host has one reader thread
per front-end, and a front-end can send each request on its own
(`[batching] shared_calls_in_flight`), leaving all batching to the host.
"""
from __future__ import annotations

import copy
import itertools
import logging
import threading
from concurrent.futures import Future
from multiprocessing import reduction
from typing import Mapping, Optional

import numpy as np

from edgeinfer.runtime.base import DescribedRunner, RunnerInfo, TensorSpec
from edgeinfer.errors import ModelNotReady
from edgeinfer.serving.shared.wire import ModelDescription, SharedBuffer, bytes_needed, output_bytes, raise_reply, shutdown_connection

log = logging.getLogger(__name__)

MIN_BUFFER = 1 << 20
# A front-end's batcher keeps this many batches per host slot in flight: while the host
# runs one, the next ones already wait there to be merged, instead of waiting in the
# front-end for a slot (H100, ResNet-50, 3 front-ends: 1 per host slot, 2,671 img/s).
# `[batching] shared_calls_in_flight` overrides it.
IN_FLIGHT_PER_HOST_SLOT = 2


class HostLink:
    """One connection to the host, shared by every calling thread of this process."""

    def __init__(self, conn):
        self.conn = conn
        self._send_lock = threading.Lock()  # a message (and an fd after it) goes out whole
        self._waiting: dict[int, Future] = {}  # call id -> the reply tuple, once it arrives
        self._call_ids = itertools.count()
        self._buffer_ids = itertools.count()
        self._free: list[SharedBuffer] = []  # buffers no call is using
        self._buffers_lock = threading.Lock()
        self._gone: Optional[str] = None     # why the host cannot be reached any more
        self._reader = threading.Thread(target=self._read, name="host-link", daemon=True)
        self._reader.start()

    # -- sending and answers --------------------------------------------------------------
    def _send_locked(self, msg: tuple) -> None:
        if self._gone is not None:
            raise ModelNotReady(self._gone)
        try:
            self.conn.send(msg)
        except (EOFError, OSError) as exc:
            raise ModelNotReady(_gone_message(exc)) from None

    def _call(self, kind: str, *args) -> tuple:
        waiting: Future = Future()
        with self._send_lock:
            call_id = next(self._call_ids)
            self._waiting[call_id] = waiting
            try:
                self._send_locked((kind, call_id) + args)
            except ModelNotReady:
                self._waiting.pop(call_id, None)
                raise
        reply = waiting.result()
        if reply[0] == "error":
            raise_reply(reply)
        return reply

    def _read(self) -> None:
        """The reader thread: each answer to the call waiting for it; all of them an error once the host is gone."""
        try:
            while True:
                call_id, reply = self.conn.recv()
                waiting = self._waiting.pop(call_id, None)
                if waiting is not None:
                    waiting.set_result(reply)
        except (EOFError, OSError) as exc:
            message = _gone_message(exc)
        except BaseException as exc:  # noqa: BLE001 - a garbled answer ends the link, it must not hang callers
            log.exception("link to the inference process failed")
            message = f"the link to the inference process failed ({type(exc).__name__})"
        with self._send_lock:  # no call registers after this
            self._gone = message
            waiting_now = list(self._waiting.values())
            self._waiting.clear()
        for waiting in waiting_now:
            waiting.set_result(("error", "ModelNotReady", message))

    # -- buffers ---------------------------------------------------------------------------
    def _take_buffer(self, nbytes: int) -> SharedBuffer:
        """A free buffer of at least `nbytes`; a new one (replacing a free one too small) when none fits."""
        with self._buffers_lock:
            fit = next((b for b in self._free if b.nbytes >= nbytes), None)
            if fit is not None:
                self._free.remove(fit)
                return fit
            old = self._free.pop() if self._free else None
        size = max(nbytes, MIN_BUFFER, int(old.nbytes * 1.5) if old is not None else 0)
        new = SharedBuffer(size, key=next(self._buffer_ids))
        try:
            with self._send_lock:
                if old is not None:
                    self._send_locked(("drop", old.key))
                self._send_locked(("buffer", new.key, size))
                try:
                    reduction.send_handle(self.conn, new.fd, 0)  # the pid is unused on Unix (SCM_RIGHTS)
                except OSError as exc:
                    raise ModelNotReady(_gone_message(exc)) from None
        except ModelNotReady:
            new.close()
            raise
        finally:
            if old is not None:
                old.close()
        return new

    def _give_back(self, buffer: SharedBuffer) -> None:
        with self._buffers_lock:
            self._free.append(buffer)

    # -- calls -----------------------------------------------------------------------------
    def describe(self, name: str) -> ModelDescription:
        return self._call("describe", name)[1]

    def infer(self, name: str, feeds: Mapping[str, np.ndarray], rows: int,
              outputs: list[TensorSpec]) -> tuple[dict[str, np.ndarray], int]:
        """The outputs, and the real rows of the host's (merged) runner call."""
        buffer = self._take_buffer(bytes_needed(feeds) + output_bytes(outputs, rows))
        try:
            layout, free_at = buffer.write(feeds)
            kind, payload, ran_rows = self._call("infer", name, buffer.key, layout, rows, free_at)
            if kind == "ok-inline":
                return payload, ran_rows
            # Copies: the buffer goes back to the pool for the next call.
            return buffer.read(payload, copy=True), ran_rows
        finally:
            self._give_back(buffer)

    def close(self) -> None:
        shutdown_connection(self.conn)  # the reader's recv ends: it fails whatever still waits
        self._reader.join(5)
        self.conn.close()
        with self._buffers_lock:
            free, self._free = self._free, []
        for b in free:
            b.close()


def _gone_message(exc: BaseException) -> str:
    return f"the inference process is gone ({type(exc).__name__}); the service restarts"


class RemoteModels:
    """A front-end process's links to the inference host (one is enough; several share the calls)."""

    def __init__(self, conns):
        self.links = [HostLink(c) for c in conns]
        self._next = itertools.cycle(self.links)
        self._closed = False

    def link(self) -> HostLink:
        if self._closed:
            raise ModelNotReady("this process is shutting down")
        return next(self._next)

    def describe(self, name: str) -> ModelDescription:
        """The host's view of the model; blocks while the host loads it."""
        return self.link().describe(name)

    def runner(self, name: str, d: ModelDescription, calls_in_flight: int = 0) -> "RemoteRunner":
        return RemoteRunner(name, d, self, calls_in_flight)

    def close(self) -> None:
        self._closed = True
        for link in self.links:
            link.close()


class RemoteRunner(DescribedRunner):
    """The host's runner for one model, seen from a front-end process.

    Reports the host runner's inputs, outputs and info, with two changes:
    `pads_batches` (the host pads merged batches to its buckets, so the
    front-end's batcher sends its rows unpadded) and `max_concurrency`: the
    front-end's calls in flight, `calls_in_flight` or else
    IN_FLIGHT_PER_HOST_SLOT x the host's slots.
    """

    def __init__(self, name: str, d: ModelDescription, models: RemoteModels, calls_in_flight: int = 0):
        super().__init__()
        self.name = name
        self._models = models
        self._inputs, self._outputs = list(d.inputs), list(d.outputs)
        info: RunnerInfo = copy.deepcopy(d.info)
        info.pads_batches = True
        info.max_concurrency = calls_in_flight or max(1, info.max_concurrency) * IN_FLIGHT_PER_HOST_SLOT
        info.details["inference_process"] = f"shared (pid {d.host_pid})"
        self._info = info
        self._last = threading.local()
        self.active = True  # the host activated it; nothing to do here

    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = next((feeds[s.name].shape[0] for s in self._inputs
                     if s.dynamic_batch and s.name in feeds and feeds[s.name].ndim), 1)
        outputs, self._last.rows = self._models.link().infer(self.name, feeds, int(rows), self._outputs)
        return outputs

    def rows_in_last_call(self) -> Optional[int]:
        return getattr(self._last, "rows", None)
