"""Per-call device slots (a stream and its buffers) handed out from a pool of fixed size.

ONNX Runtime's IO binding (runtime/onnxruntime/runner.py) and the GPU
normalizing runner (gpu/normalizing_runner.py) both run up to N calls at once,
and no two of them may share a stream or a buffer: one call's copies would
overwrite another's data in flight. Both draw their slots from this pool.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Generic, TypeVar

import numpy as np


class Slot:
    """One call's device state: a stream, and pinned and device buffers by name."""

    def __init__(self, device: int):
        from edgeinfer.runtime.gpu.memory import Stream

        self.device = device
        self.stream = Stream(device)
        self.buffers: dict[str, object] = {}

    def buffer(self, kind: str, name: str, nbytes: int):
        """The `kind` ("pin": pinned host, else device) buffer `name`, grown to at least `nbytes`.

        Kept from call to call, so a steady batch size allocates once per slot.
        """
        from edgeinfer.runtime.gpu.memory import DeviceBuffer, PinnedBuffer

        key = f"{kind}:{name}"
        buf = self.buffers.get(key)
        if buf is None:
            buf = self.buffers[key] = (PinnedBuffer if kind == "pin" else DeviceBuffer)(nbytes, self.device)
        buf.ensure(nbytes)
        return buf

    def device_and_pinned(self, name: str, nbytes: int):
        """A device buffer and the pinned buffer its host copies go through, both `buffer()`s."""
        return self.buffer("dev", name, nbytes), self.buffer("pin", name, nbytes)

    def upload(self, name: str, arr: np.ndarray):
        """Copy `arr` into device buffer `name` through its pinned buffer, on our stream: a DeviceArray.

        The device copy is async (it reads pinned memory): synchronize `stream`
        before another stream, e.g. ONNX Runtime's, reads the result.
        """
        from edgeinfer.runtime.gpu.memory import DeviceArray

        arr = np.ascontiguousarray(arr)
        dev, pin = self.device_and_pinned(name, arr.nbytes)
        np.copyto(pin.view(arr.dtype, arr.shape), arr)
        dev.copy_from_host(pin, arr.nbytes, self.stream)
        return DeviceArray(dev, arr.dtype, arr.shape)

    def close(self) -> None:
        for b in self.buffers.values():
            b.close()
        self.buffers.clear()
        self.stream.close()


S = TypeVar("S")


class SlotPool(Generic[S]):
    """Up to `size` slots, each made by `make()` when first needed; past that, acquire() waits.

    Slots are made lazily so a model that never sees concurrent calls holds one
    stream, not `size`. Anything with a close() can be a slot.
    """

    def __init__(self, size: int, make: Callable[[], S]):
        self.size = max(1, size)
        self._make = make
        self._free: queue.Queue = queue.Queue()
        self._all: list[S] = []
        self._lock = threading.Lock()

    def acquire(self) -> S:
        """An idle slot, a new one while fewer than `size` exist, else the next one released."""
        try:
            return self._free.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if len(self._all) < self.size:
                slot = self._make()
                self._all.append(slot)
                return slot
        return self._free.get()

    def release(self, slot: S) -> None:
        self._free.put(slot)

    def close(self) -> None:
        """Close every slot made so far, idle or in use.

        The idle ones stay queued, closed: the owners drop the pool after this.
        """
        with self._lock:
            for slot in self._all:
                slot.close()
            self._all.clear()
