"""Reload, drain, watchdog progress, device selection and journald lines, in a real in-process daemon
(tests/process/test_systemd.py drives real daemon processes with signals)."""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
import numpy as np
import pytest

from edgeinfer_client import Client, build_request
from edgeinfer_proto.edgeinfer.v1 import inference_pb2_grpc as pb_grpc

from edgeinfer.config import ConfigError, check_devices, load_config, parse_config
from edgeinfer.model import changes
from edgeinfer.serving.progress import InferenceProgress

X = np.arange(64, dtype=np.float32).reshape(1, 64)


def _write(path: Path, models: list[dict], server: str = "workers = 2\ninline_max_us = 0") -> Path:
    text = f"[server]\n{server}\n[metrics]\nenabled = false\n[cache]\ndir = \"{path.parent / 'cache'}\"\n"
    for m in models:
        text += (f'\n[[models]]\nname = "{m["name"]}"\nversion = "{m.get("version", "1")}"\nonnx = "{m["onnx"]}"\n'
                 f'backends = ["{m.get("backend", "onnxruntime")}"]\nwarmup_runs = 1\n[models.postprocess]\ntask = "raw"\n'
                 f'[models.onnxruntime]\nproviders = ["CPUExecutionProvider"]\nintra_op_threads = 1\n')
    path.write_text(text)
    return path


def _as_in_the_test_daemon(config):
    """What DaemonThread does to the config it starts with, done to every config a reload reads."""
    config.server.listen = "127.0.0.1:0"
    config.metrics.enabled = False
    return config


def _started(start_daemon, path: Path):
    return start_daemon(load_config(path), config_path=str(path), config_overrides=_as_in_the_test_daemon)


# -- what a reload changes ---------------------------------------------------------------

def test_plan_names_every_change(trivial_onnx, tmp_path):
    old = load_config(_write(tmp_path / "a.toml", [{"name": "a", "onnx": trivial_onnx},
                                                   {"name": "b", "onnx": trivial_onnx},
                                                   {"name": "gone", "onnx": trivial_onnx}]))
    new = load_config(_write(tmp_path / "b.toml", [{"name": "a", "onnx": trivial_onnx, "version": "2"},
                                                   {"name": "b", "onnx": trivial_onnx},
                                                   {"name": "new", "onnx": trivial_onnx}],
                             server="workers = 3\ninline_max_us = 0\ngrace_period_s = 2.0"))
    digests = {m.name: "h" for m in old.models}
    plan = changes.plan_models({m.name: m for m in old.models}, digests, new,
                               {"a": "h", "b": "other", "new": "h"})
    assert [(c.name, c.action, c.detail) for c in plan] == [
        ("a", "updated", "version 1 -> 2"), ("b", "updated", "onnx file content"),
        ("new", "added", ""), ("gone", "removed", "")]
    assert changes.settings_needing_restart(old, new) == ["[server] workers"]
    running = changes.apply_live_settings(old, new)
    assert running.server.grace_period_s == 2.0 and running.server.workers == old.server.workers
    assert [m.name for m in running.models] == ["a", "b", "new"]


# -- reload in a real daemon ------------------------------------------------------------

def test_reload_adds_removes_and_keeps_the_old_model_when_the_new_one_fails(start_daemon, trivial_onnx, tmp_path):
    path = _write(tmp_path / "edgeinfer.toml", [{"name": "keep", "onnx": trivial_onnx},
                                                 {"name": "drop", "onnx": trivial_onnx}])
    d = _started(start_daemon, path)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    _write(path, [{"name": "keep", "onnx": broken, "version": "2"}, {"name": "added", "onnx": trivial_onnx}],
           server="workers = 5\ninline_max_us = 0")
    with Client(d.address, timeout=60) as c:
        result = c.reload()
        assert result.accepted and result.needs_restart == ["[server] workers"]
        by_name = {m.name: m for m in result.models}
        assert by_name["keep"].action == "failed" and "the previous version keeps serving" in by_name["keep"].error
        assert by_name["added"].action == "added" and by_name["drop"].action == "removed"
        # The old "keep" serves on, version 1; "drop" is gone; "added" answers.
        assert c.infer("keep", tensors={"x": X}).model_version == "1"
        assert c.infer("added", tensors={"x": X}).outputs["y"][0, 0] == 1.0
        with pytest.raises(Exception, match="no model named 'drop'"):
            c.infer("drop", tensors={"x": X})
        assert c.health("added") == "SERVING" and c.health("drop") == "NOT_SERVING"
        assert c.health() == "SERVING"
    assert d.daemon.config.server.workers == 2  # not applied: needs a restart


def test_a_request_in_flight_on_the_old_version_finishes_while_new_ones_get_the_new(start_daemon, trivial_onnx,
                                                                                      tmp_path):
    path = _write(tmp_path / "edgeinfer.toml", [{"name": "m", "onnx": trivial_onnx}])
    d = _started(start_daemon, path)
    old = d.daemon.registry.get("m")
    gate, entered = threading.Event(), threading.Event()
    infer = old.runner.infer

    def held(feeds):
        entered.set()
        gate.wait(30)
        return infer(feeds)

    old.runner.infer = held  # the old version's runner hangs until released: an in-flight request
    answers = {}
    with Client(d.address, timeout=60) as c:
        slow = threading.Thread(target=lambda: answers.update(slow=c.infer("m", tensors={"x": X})))
        slow.start()
        assert entered.wait(10)
        copy = tmp_path / "v2.onnx"
        shutil.copy(trivial_onnx, copy)
        _write(path, [{"name": "m", "onnx": copy, "version": "2"}])
        reload = threading.Thread(target=lambda: answers.update(reload=c.reload()))
        reload.start()
        # Swapped in while the old one still runs a request: new requests get version 2 ...
        end = time.monotonic() + 30
        while d.daemon.registry.get("m") is old and time.monotonic() < end:
            time.sleep(0.02)
        assert c.infer("m", tensors={"x": X}).model_version == "2"
        # ... and the reload waits for the old one to drain.
        time.sleep(0.3)
        assert reload.is_alive() and old.runner is not None
        gate.set()
        slow.join(10)
        reload.join(30)
    assert answers["slow"].model_version == "1"
    assert [(m.name, m.action) for m in answers["reload"].models] == [("m", "updated")]
    assert old.runner is None  # unloaded once drained


def test_reload_without_a_config_file_is_refused(start_daemon, trivial_onnx, tmp_path):
    d = start_daemon(load_config(_write(tmp_path / "edgeinfer.toml", [{"name": "m", "onnx": trivial_onnx}])))
    with Client(d.address, timeout=10) as c:
        with pytest.raises(Exception) as info:
            c.reload()
    assert info.value.code == "FAILED_PRECONDITION" and "no config file" in str(info.value)


# -- drain on stop -----------------------------------------------------------------------

def test_stop_answers_the_frames_an_open_stream_sent_then_ends_it_unavailable(start_daemon, trivial_onnx,
                                                                              tmp_path):
    d = _started(start_daemon, _write(tmp_path / "edgeinfer.toml", [{"name": "m", "onnx": trivial_onnx}]))
    runner = d.daemon.registry.get("m").runner
    infer = runner.infer
    runner.infer = lambda feeds: (time.sleep(0.1), infer(feeds))[1]  # frames take a while
    more = threading.Event()

    def frames():
        for i in range(6):
            yield build_request("m", tensors={"x": X}, request_id=str(i))
        more.wait(30)  # the stream stays open: a camera that never stops

    channel = grpc.insecure_channel(d.address)
    # A load balancer watching health: it must see NOT_SERVING as soon as the stop begins.
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    call = pb_grpc.InferenceStub(channel).InferStream(frames(), timeout=30)
    got = []
    first = next(call)
    got.append(first.request_id)
    d.loop.call_soon_threadsafe(d.daemon.request_stop)
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.RpcError) as info:
        for resp in call:
            assert resp.WhichOneof("result") == "response"
            got.append(resp.request_id)
    more.set()
    channel.close()
    d.thread.join(30)
    assert got == [str(i) for i in range(6)]
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in info.value.details()


# -- watchdog: progress of inference ------------------------------------------------------

def test_progress_reports_a_call_running_past_the_bound():
    p = InferenceProgress()
    assert p.stalled(0.05) is None
    with p.running("faces", "batch of 4"):
        time.sleep(0.08)
        assert "model faces: a batch of 4 has been running for" in p.stalled(0.05)
        assert p.stalled(10.0) is None
    assert p.stalled(0.05) is None and p.finished == 1


# -- device selection ------------------------------------------------------------------------

def test_device_defaults_env_override_and_per_model(trivial_onnx, monkeypatch):
    raw = {"server": {"device": 1}, "models": [{"name": "a", "onnx": str(trivial_onnx)},
                                               {"name": "b", "onnx": str(trivial_onnx), "device": 0}]}
    monkeypatch.delenv("EDGEINFER_DEVICE", raising=False)
    cfg = parse_config(raw)
    assert [m.device for m in cfg.models] == [1, 0]
    monkeypatch.setenv("EDGEINFER_DEVICE", "3")
    cfg = parse_config(raw)
    assert cfg.server.device == 3 and [m.device for m in cfg.models] == [3, 0]
    monkeypatch.setenv("EDGEINFER_DEVICE", "gpu1")
    with pytest.raises(ConfigError, match="EDGEINFER_DEVICE='gpu1': expected a GPU index"):
        parse_config(raw)


def test_a_device_that_is_not_there_is_refused_naming_the_key(trivial_onnx, monkeypatch):
    monkeypatch.delenv("EDGEINFER_DEVICE", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    cfg = parse_config({"server": {"device": 1}, "models": [{"name": "a", "onnx": str(trivial_onnx), "device": 2}]},
                       source="x.toml")
    check_devices(cfg, 0)  # no GPU: the models run on the CPU, nothing to refuse
    with pytest.raises(ConfigError, match=r"x.toml: \[models.a\] device = 2: no such GPU, 2 GPU\(s\) visible "
                                          r"\(CUDA_VISIBLE_DEVICES=2,3\)"):
        check_devices(cfg, 2)
    with pytest.raises(ConfigError, match=r"\[server\] device = 1: no such GPU, 1 GPU\(s\)"):
        check_devices(cfg, 1)
    monkeypatch.setenv("EDGEINFER_DEVICE", "4")
    with pytest.raises(ConfigError, match="environment EDGEINFER_DEVICE = 4: no such GPU"):
        check_devices(parse_config({"models": []}), 2)


def test_the_daemon_refuses_to_start_on_a_missing_gpu(trivial_onnx, tmp_path, monkeypatch):
    from edgeinfer import platform
    from edgeinfer.process.daemon import Daemon

    monkeypatch.delenv("EDGEINFER_DEVICE", raising=False)
    monkeypatch.setattr(platform, "visible_gpu_count", lambda: 1)
    cfg = load_config(_write(tmp_path / "edgeinfer.toml", [{"name": "m", "onnx": trivial_onnx}],
                             server="device = 1"))
    with pytest.raises(ConfigError, match=r"\[server\] device = 1: no such GPU, 1 GPU\(s\) visible"):
        Daemon(cfg)


def test_onnxruntime_cuda_provider_gets_the_models_device(trivial_onnx):
    from edgeinfer.runtime.onnxruntime.loader import _with_options

    cfg = parse_config({"models": [{"name": "a", "onnx": str(trivial_onnx), "device": 2,
                                    "onnxruntime": {"cudnn_conv_algo_search": "heuristic"}}]}).models[0]
    assert _with_options("CUDAExecutionProvider", cfg.onnxruntime, cfg.device) == (
        "CUDAExecutionProvider", {"device_id": "2", "cudnn_conv_algo_search": "HEURISTIC"})
    assert _with_options("CPUExecutionProvider", cfg.onnxruntime, cfg.device) == "CPUExecutionProvider"


def test_tensorrt_plans_for_the_models_gpu(trivial_onnx, tmp_path):
    from testkit import trt_double

    from edgeinfer.errors import BackendLoadError
    from edgeinfer.platform import GpuInfo, PlatformInfo
    from edgeinfer.runtime import LoadRequest
    from edgeinfer.runtime.tensorrt import loader
    from edgeinfer.runtime.tensorrt.compat import TrtApi

    module = trt_double.make_module()
    api = TrtApi(module=module, name=module.__name__, version=module.__version__)
    info = PlatformInfo(machine="x86_64", python="3.11", cuda_driver="13.0", cuda_runtime="13.0",
                        gpus=[GpuInfo(0, "NVIDIA A100", "8.0", 80000), GpuInfo(1, "NVIDIA H100", "9.0", 80000)])
    cfg = parse_config({"models": [{"name": "a", "onnx": str(trivial_onnx), "device": 1}]}).models[0]
    plan = loader.plan_build(LoadRequest(model=cfg, onnx_path=Path(cfg.onnx)), api, info)
    assert plan.device_index == 1 and plan.key_fields["gpu_name"] == "NVIDIA H100"
    cfg = dataclasses.replace(cfg, device=2)
    with pytest.raises(BackendLoadError, match="device = 2, but 2 GPU"):
        loader.plan_build(LoadRequest(model=cfg, onnx_path=Path(cfg.onnx)), api, info)


# -- journald ------------------------------------------------------------------------------

def test_journal_lines_carry_priorities_and_no_timestamp():
    from edgeinfer.observe.journal import JournalFormatter

    fmt = JournalFormatter()

    def line(level, msg, exc=None):
        return fmt.format(logging.LogRecord("edgeinfer.x", level, __file__, 1, msg, (), exc))

    assert line(logging.INFO, "serving") == "<6>edgeinfer.x: serving"
    assert line(logging.WARNING, "w") == "<4>edgeinfer.x: w"
    assert line(logging.ERROR, "e") == "<3>edgeinfer.x: e"
    assert line(logging.CRITICAL, "c") == "<2>edgeinfer.x: c"
    assert line(logging.DEBUG, "d") == "<7>edgeinfer.x: d"
    assert JournalFormatter("1").format(logging.LogRecord("n", logging.INFO, __file__, 1, "m", (), None)) == "<6>[1] n: m"
    try:
        raise ValueError("boom")
    except ValueError:
        text = line(logging.ERROR, "failed", sys.exc_info())
    assert all(t.startswith("<3>") for t in text.splitlines()) and "ValueError: boom" in text


def test_journal_stream_must_name_stderr(monkeypatch, tmp_path):
    from edgeinfer.observe import journal as cli

    with open(tmp_path / "err", "w") as fh:
        st = os.fstat(fh.fileno())
        monkeypatch.setattr(sys, "stderr", fh)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert cli.stderr_is_journal()
        # Inherited by a process whose stderr went elsewhere (a shell started from the unit): not ours.
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        assert not cli.stderr_is_journal()
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not cli.stderr_is_journal()


def test_a_model_that_failed_to_load_is_tried_again_on_reload(start_daemon, trivial_onnx, tmp_path):
    # TensorRT is not installed here: the model fails to load, and again when retried.
    path = _write(tmp_path / "edgeinfer.toml", [{"name": "m", "onnx": trivial_onnx, "backend": "tensorrt"}])
    d = _started(start_daemon, path)
    assert d.daemon.registry.get("m").state.value == "failed"
    with Client(d.address, timeout=60) as c:
        result = c.reload()
    assert [(m.name, m.action, m.detail) for m in result.models] == [("m", "failed", "retried: it had failed to load")]
    assert "no backend could load the model" in result.models[0].error


def test_requests_waiting_while_nothing_runs_are_a_stall_too(start_daemon, trivial_onnx, tmp_path):
    """A wedged batcher or worker pool runs nothing at all: requests wait, no runner call starts."""
    import asyncio

    from edgeinfer.serving.lanes import InferencePipeline

    pipe = InferencePipeline(1)
    try:
        assert pipe.stalled(0.05) is None
        gate = threading.Event()
        pipe.executor.submit(gate.wait)  # the only worker is taken by something that never returns
        d = _started(start_daemon, _write(tmp_path / "edgeinfer.toml", [{"name": "m", "onnx": trivial_onnx}]))
        model = d.daemon.registry.get("m")

        async def one():
            from edgeinfer.model.families.postprocess import Options
            from edgeinfer.model.types import Tensors

            task = asyncio.ensure_future(pipe.run(model, Tensors({"x": X}), Options()))
            await asyncio.sleep(0.15)
            reason = pipe.stalled(0.1)
            gate.set()
            await task
            return reason, pipe.stalled(0.1)

        reason, after = asyncio.run(one())
        assert "1 request(s) waiting, the oldest for 0 s, and no runner call started or finished for" in reason
        assert after is None
    finally:
        gate.set()
        pipe.close(1)


def test_check_config_refuses_a_device_from_the_environment_that_is_not_there(trivial_onnx, tmp_path, monkeypatch,
                                                                               capsys):
    from edgeinfer import cli, platform

    path = _write(tmp_path / "edgeinfer.toml", [{"name": "m", "onnx": trivial_onnx}])
    monkeypatch.setattr(platform, "visible_gpu_count", lambda: 2)
    monkeypatch.setenv("EDGEINFER_DEVICE", "1")
    assert cli.main(["check-config", str(path)]) == 0
    monkeypatch.setenv("EDGEINFER_DEVICE", "2")  # edgeinfer@2 on a host with 2 GPUs
    assert cli.main(["check-config", str(path)]) == 2
    assert "environment EDGEINFER_DEVICE = 2: no such GPU, 2 GPU(s) visible" in capsys.readouterr().err


def test_reload_starts_stops_and_restarts_streams(start_daemon, centerface_onnx, media, tmp_path):
    """[[streams]] follow the config file: a new stream starts, a changed one restarts, a removed one
    stops; models change beside them."""
    from testkit.streams_kit import wait_for

    video = media / "carphone_pristine.mp4"

    def write(streams: dict[str, int]) -> Path:
        text = (f"[server]\nworkers = 2\n[metrics]\nenabled = false\n[cache]\ndir = \"{tmp_path / 'cache'}\"\n"
                f'[[models]]\nname = "faces"\nonnx = "{centerface_onnx}"\n[models.input]\nresize = "letterbox"\n'
                f'size = [640, 480]\n[models.postprocess]\ntask = "centerface"\n')
        for name, fps in streams.items():
            text += f'\n[[streams]]\nname = "{name}"\nsource = "{video}"\nmodel = "faces"\nloop = true\nfps = {fps}\n'
        path = tmp_path / "edgeinfer.toml"
        path.write_text(text)
        return path

    path = write({"kept": 5, "changed": 5, "dropped": 5})
    d = _started(start_daemon, path)
    with Client(d.address, timeout=60) as c:
        assert wait_for(lambda: all(s.frames_processed > 0 for s in c.streams()), 60)
        kept_before = {s.name: s for s in c.streams()}["kept"].frames_processed
        write({"kept": 5, "changed": 4, "added": 5})
        assert c.reload().accepted
        streams = {s.name: s for s in c.streams()}
        assert sorted(streams) == ["added", "changed", "kept"]
        # The unchanged stream ran on (its counts go on); the changed one started again from nothing.
        assert streams["kept"].frames_processed >= kept_before
        assert wait_for(lambda: {s.name: s for s in c.streams()}["added"].frames_processed > 0, 60)
        with pytest.raises(Exception, match="no stream named 'dropped'"):
            next(iter(c.watch("dropped", count=1, timeout=10)))
