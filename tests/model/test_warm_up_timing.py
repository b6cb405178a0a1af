"""The warm-up time that decides the inline path (ServedModel.warm_infer_us) survives slow early runs.

A real trivial model on ONNX Runtime; the only stand-in is a wrapper that delays
chosen calls, as a busy machine would, to check our own control flow around it.
"""
from __future__ import annotations

import time

import pytest

from edgeinfer_bench.trivial import build_trivial_onnx, trivial_model_config
from edgeinfer.config import ServerConfig
from edgeinfer.model.served import ServedModel


class _Delayed:
    """The real runner; calls whose index is in `slow` take `delay_s` longer (a preempted run)."""

    def __init__(self, runner, slow, delay_s: float):
        self.runner, self.slow, self.delay_s = runner, slow, delay_s
        self.calls = 0

    def infer(self, feeds):
        if self.slow(self.calls):
            time.sleep(self.delay_s)
        self.calls += 1
        return self.runner.infer(feeds)

    def __getattr__(self, name):
        return getattr(self.runner, name)


@pytest.fixture
def trivial_model(tmp_path):
    model = ServedModel(trivial_model_config(build_trivial_onnx(tmp_path / "trivial.onnx")), ServerConfig(), tmp_path)
    model.load()
    yield model
    model.unload()


def test_a_fast_model_is_timed_past_warm_up_runs_that_something_slowed(trivial_model):
    assert trivial_model.cfg.warmup_runs == 2
    delayed = _Delayed(trivial_model.runner, slow=lambda i: i < 2, delay_s=0.002)
    trivial_model.warm_infer_us = None
    trivial_model._warm_up(delayed)
    assert delayed.calls == 2 + ServedModel.TIMING_RUNS
    # The fastest run counts: under the 2 ms that both configured warm-up runs took at least.
    assert trivial_model.warm_infer_us < 1_500


def test_a_slow_model_gets_no_extra_runs(trivial_model):
    delayed = _Delayed(trivial_model.runner, slow=lambda i: True, delay_s=ServedModel.TIMING_RUNS_BELOW_US / 1e6)
    trivial_model.warm_infer_us = None
    trivial_model._warm_up(delayed)
    assert delayed.calls == trivial_model.cfg.warmup_runs
    assert trivial_model.warm_infer_us >= ServedModel.TIMING_RUNS_BELOW_US
