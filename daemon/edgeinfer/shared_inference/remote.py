"""Front-end side: the link to the inference host, and a Runner that calls through it.

A front-end's models load by asking the host to describe them (which waits
while the host loads); each ready model gets a `RemoteRunner` with the host
runner's tensor specs and info. Everything above the runner (lanes, batching,
deadlines, postprocessing, metrics, gRPC errors) is the standalone daemon's
code, unchanged.

A `HostLink` carries every call of the process on one connection: a caller
takes a shared buffer from the link's pool (a new one, 1.5x the size of one it
replaces, is handed to the host as an fd), writes its rows and sends a small
message with a call id. The link's reader thread takes the host's answer and
runs the call's continuation (`Runner.infer_then`): for a batch, the batcher's
split, postprocessing and delivery, so the answer reaches the event loop
without first waking the slot thread that sent the call (session 13; a plain
`infer` waits for its answer instead). Any number of calls can be in flight;
how many a model keeps there is its batcher's slots (`RemoteRunner`'s
max_concurrency).

Why one multiplexed connection and not a connection per call in flight
(sessions 5-9): the host then needed a thread per connection, 8 per model and
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
from typing import Callable, Mapping, Optional

import numpy as np

from ..backends.base import DescribedRunner, RunnerInfo, TensorSpec, Then
from ..errors import ModelNotReady
from .wire import ModelDescription, SharedBuffer, bytes_needed, output_bytes, raise_reply, shutdown_connection

log = logging.getLogger(__name__)

MIN_BUFFER = 1 << 20
OnReply = Callable[[tuple], None]  # runs on the link's reader thread with the host's reply
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
        self._waiting: dict[int, OnReply] = {}  # call id -> what takes its reply tuple
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

    def _send_call(self, kind: str, args: tuple, on_reply: OnReply) -> None:
        """Send a call; the reader thread hands its reply tuple to `on_reply`. Raises ModelNotReady
        (and `on_reply` is never called) when the host cannot be reached."""
        with self._send_lock:
            call_id = next(self._call_ids)
            self._waiting[call_id] = on_reply
            try:
                self._send_locked((kind, call_id) + args)
            except ModelNotReady:
                self._waiting.pop(call_id, None)
                raise

    def _call(self, kind: str, *args) -> tuple:
        waiting: Future = Future()
        self._send_call(kind, args, waiting.set_result)
        reply = waiting.result()
        if reply[0] == "error":
            raise_reply(reply)
        return reply

    def _read(self) -> None:
        """The reader thread: each answer to the call waiting for it; all of them an error once the host is gone."""
        try:
            while True:
                call_id, reply = self.conn.recv()
                on_reply = self._waiting.pop(call_id, None)
                if on_reply is not None:
                    _hand_over(on_reply, reply)
        except (EOFError, OSError) as exc:
            message = _gone_message(exc)
        except BaseException as exc:  # noqa: BLE001 - a garbled answer ends the link, it must not hang callers
            log.exception("link to the inference process failed")
            message = f"the link to the inference process failed ({type(exc).__name__})"
        with self._send_lock:  # no call registers after this
            self._gone = message
            waiting_now = list(self._waiting.values())
            self._waiting.clear()
        for on_reply in waiting_now:
            _hand_over(on_reply, ("error", "ModelNotReady", message))

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
        answer: Future = Future()

        def then(out, ran_rows, error) -> None:
            if error is not None:
                answer.set_exception(error)
            else:
                answer.set_result((out, ran_rows))

        self.infer_then(name, feeds, rows, outputs, then)
        return answer.result()

    def infer_then(self, name: str, feeds: Mapping[str, np.ndarray], rows: int, outputs: list[TensorSpec],
                   then: Then) -> None:
        """Send the call and return; `then(outputs, ran_rows, None)` or `then(None, None, error)` follows
        on the reader thread (or on this one, when the call cannot be sent)."""
        try:
            buffer = self._take_buffer(bytes_needed(feeds) + output_bytes(outputs, rows))
        except Exception as exc:  # noqa: BLE001 - the caller's continuation answers it
            then(None, None, exc)
            return

        def on_reply(reply: tuple) -> None:
            try:
                if reply[0] == "error":
                    raise_reply(reply)
                kind, payload, ran_rows = reply
                # Copies: the buffer goes back to the pool for the next call.
                out = payload if kind == "ok-inline" else buffer.read(payload, copy=True)
            except Exception as exc:  # noqa: BLE001 - the caller's continuation answers it
                self._give_back(buffer)
                then(None, None, exc)
                return
            self._give_back(buffer)
            then(out, ran_rows, None)

        try:
            layout, free_at = buffer.write(feeds)
            self._send_call("infer", (name, buffer.key, layout, rows, free_at), on_reply)
        except Exception as exc:  # noqa: BLE001 - not sent: answered here
            self._give_back(buffer)
            then(None, None, exc)

    def close(self) -> None:
        shutdown_connection(self.conn)  # the reader's recv ends: it fails whatever still waits
        self._reader.join(5)
        self.conn.close()
        with self._buffers_lock:
            free, self._free = self._free, []
        for b in free:
            b.close()


def _hand_over(on_reply: OnReply, reply: tuple) -> None:
    """Run a call's reply handler on the reader thread, which must outlive any handler's failure."""
    try:
        on_reply(reply)
    except Exception:  # noqa: BLE001 - the link serves every other call
        log.exception("handling a reply from the inference process failed")


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

    def _rows(self, feeds: Mapping[str, np.ndarray]) -> int:
        return int(next((feeds[s.name].shape[0] for s in self._inputs
                         if s.dynamic_batch and s.name in feeds and feeds[s.name].ndim), 1))

    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs, self._last.rows = self._models.link().infer(self.name, feeds, self._rows(feeds), self._outputs)
        return outputs

    def infer_then(self, feeds: Mapping[str, np.ndarray], then: Then) -> None:
        """Returns once the call is sent: `then` runs on the link's reader thread when the host answers
        (the batcher postprocesses there, without waking its slot thread first)."""
        try:
            self.check(feeds)
            link = self._models.link()
        except Exception as exc:  # noqa: BLE001 - the caller's continuation answers it
            then(None, None, exc)
            return
        link.infer_then(self.name, feeds, self._rows(feeds), self._outputs, then)

    def rows_in_last_call(self) -> Optional[int]:
        return getattr(self._last, "rows", None)
