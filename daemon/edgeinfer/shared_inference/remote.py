"""Front-end side: the channels to the inference host, and a Runner that calls through them.

A front-end's models load by asking the host to describe them (which waits
while the host loads); each ready model gets a `RemoteRunner` with the host
runner's tensor specs and info. Everything above the runner (lanes, batching,
deadlines, postprocessing, metrics, gRPC errors) is the standalone daemon's
code, unchanged.

Channels are pooled per process: a call takes a free one, writes its rows into
that channel's shared buffer (grown by 1.5x when too small, and handed to the
host as a new fd), and blocks in recv, without the GIL, until the host answers.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import queue
import threading
from multiprocessing import reduction
from typing import Mapping, Optional

import numpy as np

from ..backends.base import DescribedRunner, RunnerInfo, TensorSpec
from ..errors import ModelNotReady
from .wire import ModelDescription, SharedBuffer, bytes_needed, output_bytes, raise_reply

log = logging.getLogger(__name__)

MIN_BUFFER = 1 << 20
# A front-end's batcher keeps this many batches per host slot in flight: while the host
# runs one, the next ones already wait there to be merged, instead of waiting in the
# front-end for a slot (H100, ResNet-50, 3 front-ends: 1 per host slot, 2,671 img/s).
IN_FLIGHT_PER_HOST_SLOT = 2
# Channels per front-end and model (the supervisor makes them): room for the batcher's
# calls of each model at once.
CHANNELS_PER_MODEL = 8


class Channel:
    """One connection to the host and its shared buffer; used by one caller at a time."""

    def __init__(self, conn):
        self.conn = conn
        self.buffer: Optional[SharedBuffer] = None

    def _call(self, msg: tuple) -> tuple:
        try:
            self.conn.send(msg)
            reply = self.conn.recv()
        except (EOFError, OSError) as exc:
            raise ModelNotReady(f"the inference process is gone ({type(exc).__name__}); "
                                f"the service restarts") from None
        if reply[0] == "error":
            raise_reply(reply)
        return reply

    def describe(self, name: str) -> ModelDescription:
        return self._call(("describe", name))[1]

    def _room(self, nbytes: int) -> SharedBuffer:
        if self.buffer is None or self.buffer.nbytes < nbytes:
            size = max(nbytes, MIN_BUFFER, int(self.buffer.nbytes * 1.5) if self.buffer else 0)
            new = SharedBuffer(size)
            try:
                self.conn.send(("buffer", size))
                reduction.send_handle(self.conn, new.fd, 0)  # the pid is unused on Unix (SCM_RIGHTS)
            except (EOFError, OSError) as exc:
                new.close()
                raise ModelNotReady(f"the inference process is gone ({type(exc).__name__}); "
                                    f"the service restarts") from None
            if self.buffer is not None:
                self.buffer.close()
            self.buffer = new
        return self.buffer

    def infer(self, name: str, feeds: Mapping[str, np.ndarray], rows: int,
              outputs: list[TensorSpec]) -> tuple[dict[str, np.ndarray], int]:
        """The outputs, and the real rows of the host's (merged) runner call."""
        buffer = self._room(bytes_needed(feeds) + output_bytes(outputs, rows))
        layout, free_at = buffer.write(feeds)
        kind, payload, ran_rows = self._call(("infer", name, layout, rows, free_at))
        if kind == "ok-inline":
            return payload, ran_rows
        # Copies: the buffer is this channel's next call's.
        return buffer.read(payload, copy=True), ran_rows

    def close(self) -> None:
        self.conn.close()
        if self.buffer is not None:
            self.buffer.close()
            self.buffer = None


class RemoteModels:
    """A front-end process's pool of channels to the inference host."""

    def __init__(self, conns):
        self._all = [Channel(c) for c in conns]
        self._free: queue.Queue[Channel] = queue.Queue()
        for ch in self._all:
            self._free.put(ch)
        self._closed = threading.Event()

    @contextlib.contextmanager
    def channel(self):
        while True:
            if self._closed.is_set():
                raise ModelNotReady("this process is shutting down")
            try:
                ch = self._free.get(timeout=0.5)
                break
            except queue.Empty:
                continue
        try:
            yield ch
        finally:
            self._free.put(ch)

    def describe(self, name: str) -> ModelDescription:
        """The host's view of the model; blocks while the host loads it."""
        with self.channel() as ch:
            return ch.describe(name)

    def runner(self, name: str, d: ModelDescription) -> "RemoteRunner":
        return RemoteRunner(name, d, self)

    def close(self) -> None:
        self._closed.set()
        for ch in self._all:
            ch.close()


class RemoteRunner(DescribedRunner):
    """The host's runner for one model, seen from a front-end process.

    Reports the host runner's inputs, outputs and info, with two changes:
    `pads_batches` (the host pads merged batches to its buckets, so the
    front-end's batcher sends its rows unpadded) and `max_concurrency` =
    IN_FLIGHT_PER_HOST_SLOT x the host's slots.
    """

    def __init__(self, name: str, d: ModelDescription, models: RemoteModels):
        super().__init__()
        self.name = name
        self._models = models
        self._inputs, self._outputs = list(d.inputs), list(d.outputs)
        info: RunnerInfo = copy.deepcopy(d.info)
        info.pads_batches = True
        info.max_concurrency = min(CHANNELS_PER_MODEL, max(1, info.max_concurrency) * IN_FLIGHT_PER_HOST_SLOT)
        info.details["inference_process"] = f"shared (pid {d.host_pid})"
        self._info = info
        self._last = threading.local()
        self.active = True  # the host activated it; nothing to do here

    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = next((feeds[s.name].shape[0] for s in self._inputs
                     if s.dynamic_batch and s.name in feeds and feeds[s.name].ndim), 1)
        with self._models.channel() as ch:
            outputs, self._last.rows = ch.infer(self.name, feeds, int(rows), self._outputs)
        return outputs

    def rows_in_last_call(self) -> Optional[int]:
        return getattr(self._last, "rows", None)
