"""SlotPool and Slot (gpu/slots.py) on the CPU: the pool is generic, and Slot's CUDA classes are
imported when used, so stand-ins take their place here."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edgeinfer.runtime.gpu import memory
from edgeinfer.runtime.gpu.slots import Slot, SlotPool


class _Thing:
    def __init__(self, n: int):
        self.n = n
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _pool(size: int):
    made: list[_Thing] = []

    def make() -> _Thing:
        made.append(_Thing(len(made)))
        return made[-1]

    return SlotPool(size, make), made


def test_slots_are_made_on_demand_up_to_size_and_reused():
    pool, made = _pool(2)
    assert made == []
    a = pool.acquire()
    pool.release(a)
    assert pool.acquire() is a and len(made) == 1  # an idle slot is reused before a new one is made
    b = pool.acquire()
    assert b is not a and len(made) == 2
    pool.release(a)
    pool.release(b)
    assert {pool.acquire(), pool.acquire()} == {a, b} and len(made) == 2


def test_size_below_one_still_allows_one_call():
    pool, made = _pool(0)
    assert pool.size == 1
    assert pool.acquire() is made[0]


def test_acquire_blocks_when_all_are_busy_until_one_is_released():
    pool, made = _pool(1)
    held = pool.acquire()
    got: list[_Thing] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire()), daemon=True)
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and got == [] and len(made) == 1  # waits; makes no second slot
    pool.release(held)
    waiter.join(5)
    assert not waiter.is_alive() and got == [held]


def test_concurrent_callers_never_share_a_slot_nor_exceed_size():
    pool, made = _pool(3)
    lock = threading.Lock()
    in_use: set[int] = set()
    peak = [0]
    errors: list[str] = []

    def call() -> None:
        for _ in range(50):
            slot = pool.acquire()
            try:
                with lock:
                    if slot.n in in_use:
                        errors.append(f"slot {slot.n} handed out twice")
                    in_use.add(slot.n)
                    peak[0] = max(peak[0], len(in_use))
                time.sleep(0.0005)
                with lock:
                    in_use.discard(slot.n)
            finally:
                pool.release(slot)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(made) == 3 and peak[0] == 3


def test_close_closes_every_slot_made_idle_or_in_use():
    pool, made = _pool(3)
    busy = pool.acquire()
    idle = pool.acquire()
    pool.release(idle)
    pool.close()
    assert busy.closed and idle.closed and len(made) == 2


# -- Slot, with stand-ins for the cuda-python classes ------------------------------------------

class _FakeStream:
    def __init__(self, device: int = 0):
        self.device = device
        self.closed = False

    def close(self) -> None:
        self.closed = True


_allocations: list[tuple[str, int]] = []


class _FakeBuffer:
    def __init__(self, nbytes: int, device: int = 0):
        self.nbytes = nbytes
        self.device = device
        self.closed = False
        _allocations.append((type(self).__name__, nbytes))

    def ensure(self, nbytes: int) -> None:
        self.nbytes = max(self.nbytes, nbytes)

    def close(self) -> None:
        self.closed = True


class _FakeDevice(_FakeBuffer):
    ptr = 0x1000

    def copy_from_host(self, src, nbytes: int, stream) -> None:
        self.received = (bytes(src.data[:nbytes]), stream)


class _FakePinned(_FakeBuffer):
    def ensure(self, nbytes: int) -> None:
        super().ensure(nbytes)
        if len(getattr(self, "data", b"")) < self.nbytes:
            self.data = bytearray(self.nbytes)

    def view(self, dtype, shape) -> np.ndarray:
        dtype = np.dtype(dtype)
        return np.frombuffer(self.data, dtype, int(np.prod(shape)) if shape else 1).reshape(shape)


@pytest.fixture
def fake_cuda(monkeypatch):
    _allocations.clear()
    monkeypatch.setattr(memory, "Stream", _FakeStream)
    monkeypatch.setattr(memory, "DeviceBuffer", _FakeDevice)
    monkeypatch.setattr(memory, "PinnedBuffer", _FakePinned)
    return _allocations


def test_slot_buffers_are_kept_per_kind_and_name_and_grow(fake_cuda):
    slot = Slot(3)
    assert isinstance(slot.stream, _FakeStream) and slot.stream.device == 3
    pin = slot.buffer("pin", "x", 100)
    dev = slot.buffer("dev", "x", 100)
    assert isinstance(pin, _FakePinned) and isinstance(dev, _FakeDevice) and pin.device == dev.device == 3
    assert slot.buffer("pin", "x", 50) is pin and pin.nbytes == 100  # never shrinks
    assert slot.buffer("dev", "x", 400) is dev and dev.nbytes == 400  # grows in place
    assert slot.buffer("dev", "x:float", 8) is not dev
    assert len(fake_cuda) == 3


def test_device_and_pinned_pairs_a_device_buffer_with_its_staging(fake_cuda):
    slot = Slot(0)
    dev, pin = slot.device_and_pinned("in:x", 64)
    assert isinstance(dev, _FakeDevice) and isinstance(pin, _FakePinned)
    assert fake_cuda == [("_FakeDevice", 64), ("_FakePinned", 64)]
    assert slot.device_and_pinned("in:x", 128) == (dev, pin) and dev.nbytes == pin.nbytes == 128
    assert slot.device_and_pinned("out:x", 8)[0] is not dev


def test_slot_close_frees_its_buffers_and_stream(fake_cuda):
    slot = Slot(0)
    bufs = [*slot.device_and_pinned("in:x", 4), slot.buffer("dev", "y", 4)]
    stream = slot.stream
    slot.close()
    assert all(b.closed for b in bufs) and stream.closed and slot.buffers == {}


def test_upload_stages_through_pinned_memory_on_the_slot_stream(fake_cuda):
    slot = Slot(0)
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)[:, ::2]  # not contiguous
    dev = slot.upload("x", arr)
    assert dev.dtype == np.uint8 and dev.shape == (2, 2, 4) and dev.buffer is slot.buffer("dev", "x", 16)
    assert dev.ptr == _FakeDevice.ptr
    data, stream = dev.buffer.received
    assert data == np.ascontiguousarray(arr).tobytes() and stream is slot.stream
    assert slot.upload("x", arr[:1]).buffer is dev.buffer  # reused, not reallocated
    assert fake_cuda == [("_FakeDevice", 16), ("_FakePinned", 16)]
