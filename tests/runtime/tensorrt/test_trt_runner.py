"""TensorRTRunner control flow with doubles for TensorRT (trt_double.FakeEngine) and for
the CUDA buffers (host memory standing in for device memory). This checks our bookkeeping:
profile per instance, buffer sizing, copies, output shapes, the instance pool. It says
nothing about TensorRT itself, whose execute path has not run anywhere."""
from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from testkit import trt_double
from edgeinfer.runtime import LoadRequest
from edgeinfer.runtime.gpu import memory as gpu_memory
from edgeinfer.runtime.tensorrt import loader
from edgeinfer.runtime.tensorrt.builder import build_engine
from edgeinfer.runtime.tensorrt.runner import TensorRTRunner
from edgeinfer.errors import InvalidInput


class FakeCuda:
    """Device and pinned buffers (runtime/gpu/memory.py's) as numpy byte arrays in one registry (ptr -> array)."""

    def __init__(self):
        self.memory: dict[int, np.ndarray] = {}
        self._ptrs = itertools.count(0x1000, 0x1000)
        self.copies = 0
        cuda = self

        class Buffer:
            def __init__(self, nbytes, device=0):
                self.nbytes = nbytes
                self.ptr = next(cuda._ptrs)
                cuda.memory[self.ptr] = np.zeros(nbytes, np.uint8)

            def view(self, dtype, shape):
                n = int(np.prod(shape)) * np.dtype(dtype).itemsize
                return cuda.memory[self.ptr][:n].view(dtype).reshape(shape)

            def copy_from_host(self, src, nbytes, stream):
                cuda.copies += 1
                cuda.memory[self.ptr][:nbytes] = cuda.memory[src.ptr][:nbytes]

            def copy_to_host(self, dst, nbytes, stream):
                cuda.copies += 1
                cuda.memory[dst.ptr][:nbytes] = cuda.memory[self.ptr][:nbytes]

            def close(self):
                cuda.memory.pop(self.ptr, None)

        class Stream:
            ptr = 7

            def __init__(self, device=0):
                pass

            def synchronize(self):
                pass

            def close(self):
                pass

        self.Buffer, self.Stream = Buffer, Stream

    def install(self, monkeypatch):
        monkeypatch.setattr(gpu_memory, "DeviceBuffer", self.Buffer)
        monkeypatch.setattr(gpu_memory, "PinnedBuffer", self.Buffer)
        monkeypatch.setattr(gpu_memory, "Stream", self.Stream)
        monkeypatch.setattr(gpu_memory, "use_device", lambda i: None)
        trt_double.FakeContext.memory = self.memory


@pytest.fixture
def fake_cuda(monkeypatch):
    cuda = FakeCuda()
    cuda.install(monkeypatch)
    return cuda


@pytest.fixture
def make_runner(make_api, model_cfg, gpu_platform, fake_cuda):
    def _make(instances=2, **cfg):
        api, module = make_api(inputs=(("input", (-1, 3, 8, 8)),))
        model = model_cfg(tensorrt={"instances": instances, **cfg})
        plan = loader.plan_build(LoadRequest(model=model, onnx_path=Path(model.onnx)), api, gpu_platform)
        data = build_engine(api, Path(model.onnx), plan.settings)
        engine = module.Runtime(None).deserialize_cuda_engine(data)
        runner = TensorRTRunner(api, engine, precision="fp32", instances=instances,
                                profiles_per_instance=len(plan.settings.profiles), warmup_runs=1)
        runner.activate()
        return runner

    return _make


def test_infer_copies_in_runs_and_copies_out(make_runner, fake_cuda):
    runner = make_runner()
    x = np.random.default_rng(0).random((3, 3, 8, 8), dtype=np.float32)
    out = runner.infer({"input": x})
    np.testing.assert_allclose(out["probs"], x.reshape(3, -1).mean(axis=1, keepdims=True), rtol=1e-6)
    assert out["probs"].shape == (3, 1)
    assert runner.info.max_batch == 4 and runner.info.max_concurrency == 2


def test_each_instance_owns_its_profile_and_buffers_fit_the_max_shape(make_runner, fake_cuda):
    runner = make_runner(instances=3)
    assert [inst.profile_ids for inst in runner._all] == [[0], [1], [2]]
    assert [inst.context.profile for inst in runner._all] == [0, 1, 2]
    for inst in runner._all:
        assert inst.buffers["input"].nbytes == 4 * 3 * 8 * 8 * 4  # max batch 4, float32
        assert inst.buffers["probs"].nbytes == 4 * 1 * 4


def test_multiple_profiles_switch_per_call(make_runner):
    profiles = [{"min": {"input": [1, 3, 8, 8]}, "opt": {"input": [2, 3, 8, 8]}, "max": {"input": [2, 3, 8, 8]}},
                {"min": {"input": [3, 3, 8, 8]}, "opt": {"input": [8, 3, 8, 8]}, "max": {"input": [8, 3, 8, 8]}}]
    runner = make_runner(instances=1, profiles=profiles)
    ctx = runner._all[0].context
    x = np.ones((6, 3, 8, 8), np.float32)
    assert runner.infer({"input": x})["probs"].shape == (6, 1)
    assert ctx.profile == 1
    runner.infer({"input": x[:2]})
    assert ctx.profile == 0 and runner.info.max_batch == 8


def test_batch_beyond_the_profile_is_invalid_input(make_runner):
    runner = make_runner()
    with pytest.raises(InvalidInput, match="exceeds the engine's maximum batch 4"):
        runner.infer({"input": np.zeros((5, 3, 8, 8), np.float32)})


def test_concurrent_calls_each_get_their_own_answer(make_runner):
    runner = make_runner(instances=2)
    rng = np.random.default_rng(1)
    xs = [rng.random((int(rng.integers(1, 5)), 3, 8, 8), dtype=np.float32) for _ in range(24)]

    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda x: runner.infer({"input": x})["probs"], xs))
    for x, y in zip(xs, outs):
        np.testing.assert_allclose(y, x.reshape(len(x), -1).mean(axis=1, keepdims=True), rtol=1e-6)


def test_deactivate_frees_every_buffer(make_runner, fake_cuda):
    runner = make_runner(instances=2)
    assert len(fake_cuda.memory) == 2 * 2 * 2  # instances x tensors x (device + pinned)
    runner.deactivate()
    assert fake_cuda.memory == {}


def test_run_device_reads_an_input_where_it_lies_without_a_copy(make_runner, fake_cuda):
    from types import SimpleNamespace

    runner = make_runner()
    x = np.random.default_rng(2).random((3, 3, 8, 8), dtype=np.float32)
    on_device = fake_cuda.Buffer(x.nbytes)  # what the preprocessing kernel wrote
    on_device.view(np.float32, x.shape)[...] = x
    tensor = SimpleNamespace(ptr=on_device.ptr, shape=x.shape, dtype=np.float32)
    copies = fake_cuda.copies
    out = runner.run_device({"input": tensor})
    np.testing.assert_allclose(out["probs"], x.reshape(3, -1).mean(axis=1, keepdims=True), rtol=1e-6)
    assert fake_cuda.copies - copies == 1  # the output's way back only
    with pytest.raises(InvalidInput, match="takes float32, the device tensor is float16"):
        runner.run_device({"input": SimpleNamespace(ptr=on_device.ptr, shape=x.shape, dtype=np.float16)})
    with pytest.raises(InvalidInput, match="outside every optimization profile"):
        runner.run_device({"input": SimpleNamespace(ptr=on_device.ptr, shape=(9, 3, 8, 8), dtype=np.float32)})
    # the host path still works on the same instances afterwards
    np.testing.assert_allclose(runner.infer({"input": x})["probs"], out["probs"], rtol=1e-6)
