"""[server] processes > 1: real daemon processes sharing one port under a supervisor."""
from __future__ import annotations

import os
import signal
import socket
import threading
import time
import urllib.request

import numpy as np
import pytest

import grpc
from edgeinfer_client import Client, build_request
from edgeinfer_proto.edgeinfer.v1 import inference_pb2 as pb
from edgeinfer_proto.tensors import from_tensor
from testkit.supervisor_kit import Running


def _free_ports(n: int = 2) -> int:
    """A port p with p .. p + n - 1 all free (metrics of processes 0 .. n - 1)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        try:
            for k in range(1, n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p + k))
            return p
        except OSError:
            continue
    raise RuntimeError(f"no {n} consecutive free ports")


def _config(tmp_path, trivial_onnx, metrics_port=0, processes=2, inference="per-process"):
    from edgeinfer.config import parse_config

    return parse_config({
        "server": {"listen": "127.0.0.1:0", "workers": 2, "processes": processes, "grace_period_s": 1.0,
                   "inference": inference},
        "metrics": {"enabled": bool(metrics_port), "listen": f"127.0.0.1:{metrics_port or 9400}"},
        "cache": {"dir": str(tmp_path)},
        "models": [{"name": "trivial", "onnx": str(trivial_onnx), "backends": ["onnxruntime"],
                    "postprocess": {"task": "raw"}, "onnxruntime": {"intra_op_threads": 1}}],
    }, source="test_supervisor")


def _metric_sum(port: int, prefix: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(prefix) and 'model="trivial"' in line)


def _requests_served(port: int) -> float:
    return _metric_sum(port, 'edgeinfer_requests_total{code="OK"')


def test_two_processes_share_the_port_and_both_serve(tmp_path, trivial_onnx):
    base = _free_ports(2)
    r = Running(_config(tmp_path, trivial_onnx, metrics_port=base))
    try:
        pids = r.sup.pids
        assert len(pids) == 2 and all(p != os.getpid() for p in pids)
        x = np.arange(64, dtype=np.float32)[None]
        request = build_request("trivial", tensors={"x": x}).SerializeToString()
        for _ in range(24):
            # A new connection each: the kernel spreads connections, not calls. A channel of its own
            # subchannel pool never reuses a connection another channel to the same target left open.
            with grpc.insecure_channel(r.listen, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                answer = pb.InferResponse.FromString(ch.unary_unary("/edgeinfer.v1.Inference/Infer")(request, timeout=30))
                (y,) = answer.outputs
                np.testing.assert_array_equal(from_tensor(y), x + 1)
        served = [_requests_served(base), _requests_served(base + 1)]  # each process: its own endpoint
        assert sum(served) == 24
        assert min(served) > 0, f"one process took every connection: {served}"
        # Every process has loaded: overall health is SERVING whichever process answers
        # (each child learns it on its next tick).
        end = time.monotonic() + 10
        answers: list[str] = []
        while time.monotonic() < end:
            answers = []
            for _ in range(8):
                with Client(r.listen, timeout=10) as c:
                    answers.append(c.health(""))
            if set(answers) == {"SERVING"}:
                break
            time.sleep(0.5)
        assert set(answers) == {"SERVING"}, answers
    finally:
        r.stop()
    assert r.rc == 0
    assert not any(_alive(p) for p in pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is gone for our purposes
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_dead_process_stops_the_service_non_zero(tmp_path, trivial_onnx):
    r = Running(_config(tmp_path, trivial_onnx))
    victim, other = r.sup.pids
    os.kill(victim, signal.SIGKILL)
    r.thread.join(30)
    assert r.rc == 1  # systemd's Restart=on-failure brings the whole service back
    end = time.monotonic() + 15
    while _alive(other) and time.monotonic() < end:
        time.sleep(0.1)
    assert not _alive(other)


def test_a_taken_port_is_refused_before_any_process_starts(tmp_path, trivial_onnx):
    from edgeinfer.process.supervisor import Supervisor

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        config = _config(tmp_path, trivial_onnx)
        config.server.listen = f"127.0.0.1:{s.getsockname()[1]}"
        sup = Supervisor(config)
        with pytest.raises(OSError, match="cannot listen on 127.0.0.1"):
            sup.start()
        assert sup.pids == []


def test_child_configs_share_the_port_and_split_the_metrics_ports(tmp_path, trivial_onnx):
    from edgeinfer.config import ConfigError
    from edgeinfer.process.supervisor import child_config

    config = _config(tmp_path, trivial_onnx, metrics_port=9500, processes=3)
    children = [child_config(config, i, "127.0.0.1:6000") for i in range(3)]
    assert [c.server.listen for c in children] == ["127.0.0.1:6000"] * 3
    assert [c.metrics.listen for c in children] == ["127.0.0.1:9500", "127.0.0.1:9501", "127.0.0.1:9502"]
    assert all(c.server.processes == 1 for c in children) and config.server.processes == 3
    with pytest.raises(ConfigError, match="processes"):
        from edgeinfer.config import parse_config

        parse_config({"server": {"listen": "unix:/tmp/x.sock", "processes": 2}}, source="t")


def test_overall_health_waits_until_every_sibling_process_loaded(start_daemon, tmp_path, trivial_onnx):
    """A child whose own models are ready still answers NOT_SERVING overall while a sibling loads."""
    siblings = threading.Event()
    d = start_daemon(_config(tmp_path, trivial_onnx, processes=1), siblings_ready=siblings.is_set)
    with Client(d.address, timeout=10) as c:
        assert c.health("trivial") == "SERVING"  # this process's own model
        time.sleep(0.6)  # several ticks (0.2 s each)
        assert c.health("") == "NOT_SERVING"
        siblings.set()
        end = time.monotonic() + 5
        while c.health("") != "SERVING" and time.monotonic() < end:
            time.sleep(0.05)
        assert c.health("") == "SERVING"


# -- [server] inference = "shared" ------------------------------------------------------------

def test_shared_inference_two_front_ends_one_host(tmp_path, trivial_onnx):
    """Both front-ends serve; every row runs in the one inference process (its own metrics endpoint)."""
    base = _free_ports(3)
    r = Running(_config(tmp_path, trivial_onnx, metrics_port=base, inference="shared"))
    try:
        pids = r.sup.pids
        assert len(pids) == 3  # the host and 2 front-ends
        x = np.arange(64, dtype=np.float32)[None]
        for _ in range(24):
            with Client(r.listen, timeout=30) as c:
                np.testing.assert_array_equal(c.infer("trivial", tensors={"x": x}).outputs["y"], x + 1)
        served = [_requests_served(base), _requests_served(base + 1)]
        assert sum(served) == 24 and min(served) > 0, served
        # The host (metrics port + 2) ran every row, in runner calls it counts itself; the front-ends
        # run no model: only the host's process holds the ONNX Runtime session.
        assert _metric_sum(base + 2, "edgeinfer_batch_size_sum{") >= 24  # + the front-ends' warm-up calls
        with Client(r.listen, timeout=10) as c:
            assert "inference process shared (pid" in c.get_model("trivial").state_reason
    finally:
        r.stop()
    assert r.rc == 0
    assert not any(_alive(p) for p in pids)


def test_a_dead_inference_host_stops_the_service_non_zero(tmp_path, trivial_onnx):
    r = Running(_config(tmp_path, trivial_onnx, inference="shared"))
    host = next(p for p in r.sup._procs if p.name == "edgeinfer-inference").pid
    fronts = [p for p in r.sup.pids if p != host]
    with Client(r.listen, timeout=30) as c:
        c.infer("trivial", tensors={"x": np.zeros((1, 64), np.float32)})
    os.kill(host, signal.SIGKILL)
    r.thread.join(30)
    assert r.rc == 1
    end = time.monotonic() + 15
    while any(_alive(p) for p in fronts) and time.monotonic() < end:
        time.sleep(0.1)
    assert not any(_alive(p) for p in fronts)


def test_shared_inference_needs_a_tcp_port():
    from edgeinfer.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="inference"):
        parse_config({"server": {"listen": "unix:/tmp/x.sock", "inference": "shared"}}, source="t")


def test_one_readiness_rule_for_a_daemon_and_a_supervisor():
    from edgeinfer.process.systemd import ready_by_policy

    assert ready_by_policy("all-models", ["ready", "ready"]) and not ready_by_policy("all-models", ["ready", "loading"])
    assert ready_by_policy("any-model", ["failed", "ready"]) and not ready_by_policy("any-model", ["failed", "loading"])
    assert ready_by_policy("any-model", []) and ready_by_policy("listening", ["loading"])
