"""Fixtures for the TensorRT backend tests: a TensorRT double, a GPU platform double,
model configs and a tiny real ONNX file."""
from __future__ import annotations

from pathlib import Path

import pytest
from testkit import trt_double
from testkit.onnx_graphs import write_onnx

from edgeinfer.platform import GpuInfo, PlatformInfo


@pytest.fixture
def make_api():
    """make_api(**double_options) -> (TrtApi over a fresh TensorRT double, the module)."""
    from edgeinfer.runtime.tensorrt.compat import TrtApi

    def _make(**kw):
        module = trt_double.make_module(**kw)
        return TrtApi(module=module, name=module.__name__, version=module.__version__), module

    return _make


@pytest.fixture
def gpu_platform(monkeypatch):
    """A platform double with one H200; the loader's platform probe returns it."""
    from edgeinfer.runtime.tensorrt import loader

    info = PlatformInfo(machine="x86_64", python="3.11", cuda_driver="13.0", cuda_runtime="13.0",
                        gpus=[GpuInfo(0, "NVIDIA H200", "9.0", 143000)])
    monkeypatch.setattr(loader, "_platform", lambda: info)
    return info


@pytest.fixture
def tiny_onnx(tmp_path) -> Path:
    return write_onnx(tmp_path / "tiny.onnx")


@pytest.fixture
def model_cfg(tiny_onnx):
    """model_cfg(**overrides) -> a validated config.ModelConfig for tiny.onnx.

    Overrides are merged into the [[models]] table (nested dicts for sub-tables).
    """
    from edgeinfer.config import parse_config

    def _make(**overrides):
        table = {"name": "tiny", "onnx": str(tiny_onnx), "input": {"size": [8, 8]},
                 "batching": {"max_batch": 4}}
        for k, v in overrides.items():
            if isinstance(v, dict) and isinstance(table.get(k), dict):
                table[k] = {**table[k], **v}
            else:
                table[k] = v
        return parse_config({"models": [table]}, check_files=False).models[0]

    return _make


@pytest.fixture
def no_cuda_check(monkeypatch):
    """Pretend cuda-python imports (it is not installed here); execution is not reached."""
    from edgeinfer.runtime.gpu import memory

    monkeypatch.setattr(memory, "cudart", lambda: object())
