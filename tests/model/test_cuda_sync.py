"""[server] cuda_sync on a machine without a GPU: validated, applied before the runtime loads, harmless.

Whether the flags change how a thread waits is checked on a GPU (tests/gpu/test_host_wait.py).
"""
from __future__ import annotations

import logging

import pytest

from edgeinfer.model import loading
from edgeinfer.config import parse_config
from edgeinfer.runtime.gpu import memory
from edgeinfer.model.types import ModelState


def test_unknown_modes_are_refused_in_the_config_and_by_the_call():
    from edgeinfer.errors import ConfigError

    with pytest.raises(ConfigError, match="cuda_sync"):
        parse_config({"server": {"cuda_sync": "fast"}}, source="t")
    with pytest.raises(ValueError, match="host wait"):
        memory.set_host_wait("fast")
    assert memory.set_host_wait("auto") is False


def test_the_mode_is_set_before_the_runtime_loads(imagenet_model, tmp_path, monkeypatch):
    events = []
    monkeypatch.setattr(memory, "set_host_wait", lambda mode: events.append(("wait", mode)) or True)
    real = loading.ModelLoader.__call__

    def load(self):
        events.append(("load", self.cfg.name))
        return real(self)

    monkeypatch.setattr(loading.ModelLoader, "__call__", load)
    model = imagenet_model(tmp_path, server={"cuda_sync": "block"})
    try:
        assert model.state is ModelState.READY, model.state_reason
        assert events == [("wait", "block"), ("load", "imagenet")]
    finally:
        model.unload()


def test_auto_never_touches_cuda(imagenet_model, tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "set_host_wait", lambda mode: pytest.fail("auto must not call set_host_wait"))
    model = imagenet_model(tmp_path, server={"cuda_sync": "auto"})
    try:
        assert model.state is ModelState.READY, model.state_reason
    finally:
        model.unload()


def test_block_without_a_gpu_loads_quietly(imagenet_model, tmp_path, caplog):
    if memory.device_count():
        pytest.skip("a CUDA device is visible: tests/gpu/test_host_wait.py covers it")
    with caplog.at_level(logging.WARNING, logger="edgeinfer"):
        model = imagenet_model(tmp_path, server={"cuda_sync": "block"})
    try:
        assert model.state is ModelState.READY, model.state_reason
        assert not [r for r in caplog.records if "cuda_sync" in r.getMessage()]
    finally:
        model.unload()
