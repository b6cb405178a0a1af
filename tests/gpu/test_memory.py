"""Device/pinned buffers, streams, async copies; error checking of cuda-python results."""
from __future__ import annotations

import numpy as np
import pytest

from edgeinfer.runtime.gpu.memory import CudaError, check

pytestmark = pytest.mark.gpu


def test_check_unwraps_values_and_raises_on_error_codes():
    # Runs without a GPU: check() only looks at the code.
    assert check((0,), "nothing") is None
    assert check((0, 42), "one") == 42
    assert check((0, 1, 2), "two") == (1, 2)
    with pytest.raises(CudaError, match=r"cudaMalloc\(1\) failed: .*error 2"):
        check((2, None), "cudaMalloc(1)")


def test_pinned_round_trip_through_the_device(stream):
    from edgeinfer.runtime.gpu.memory import DeviceBuffer, PinnedBuffer

    rng = np.random.default_rng()
    data = rng.standard_normal((3, 257)).astype(np.float32)
    with DeviceBuffer(data.nbytes) as dev, PinnedBuffer(data.nbytes) as src, PinnedBuffer(data.nbytes) as dst:
        src.view(np.float32, data.shape)[...] = data
        dst.view(np.float32, data.shape)[...] = np.nan  # poison: every element must be written back
        dev.copy_from_host(src, data.nbytes, stream)
        dev.copy_to_host(dst, data.nbytes, stream)
        stream.synchronize()
        assert np.array_equal(dst.view(np.float32, data.shape), data)


def test_buffers_grow_and_refuse_oversized_copies(stream):
    from edgeinfer.runtime.gpu.memory import DeviceArray, DeviceBuffer

    buf = DeviceBuffer(16)
    try:
        with pytest.raises(ValueError, match="does not fit"):
            buf.copy_from_host(np.zeros(8, np.float32), 32, stream)
        buf.ensure(4096)
        assert buf.nbytes >= 4096 and buf.ptr
        arr = np.arange(1024, dtype=np.float32)
        buf.copy_from_host(arr, arr.nbytes, stream)
        stream.synchronize()
        assert np.array_equal(DeviceArray(buf, np.float32, (1024,)).to_host(stream), arr)
    finally:
        buf.close()
    assert buf.ptr == 0  # freed


def test_buffers_grow_by_half_again_so_a_rising_size_does_not_reallocate_each_time(cuda_device):
    from edgeinfer.runtime.gpu.memory import DeviceBuffer, PinnedBuffer

    for kind in (DeviceBuffer, PinnedBuffer):
        buf = kind(1000)
        try:
            buf.ensure(1100)
            assert buf.nbytes == 1500, kind.__name__
            ptr = buf.ptr
            buf.ensure(1400)  # still fits: same allocation
            assert buf.ptr == ptr and buf.nbytes == 1500
            buf.ensure(1000)  # never shrinks
            assert buf.nbytes == 1500
        finally:
            buf.close()


def test_a_failing_cuda_call_names_itself(cuda_device):
    from edgeinfer.runtime.gpu.memory import DeviceBuffer

    with pytest.raises(CudaError, match="cudaMalloc"):
        DeviceBuffer(1 << 60)  # an exabyte: out of memory, reported, not a crash
