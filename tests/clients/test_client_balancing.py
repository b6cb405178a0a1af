"""The client spreads calls over several daemons and survives one of them stopping."""
from __future__ import annotations

import asyncio
import json
import threading
import time

import numpy as np
import pytest

from edgeinfer_client import AsyncClient, Client
from edgeinfer_client.balancing import channel_target


def _config(trivial_onnx, tmp_path):
    from edgeinfer.config import Config, parse_config

    from edgeinfer_bench.trivial import trivial_model_config

    cfg: Config = parse_config({"server": {"workers": 2, "grace_period_s": 2.0},
                                "cache": {"dir": str(tmp_path)}, "models": []}, source="test_client_balancing")
    cfg.models.append(trivial_model_config(trivial_onnx))
    return cfg


def _served(d) -> float:
    value = d.daemon.metrics.registry.get_sample_value("edgeinfer_requests_total", {"model": "trivial", "code": "OK"})
    return value or 0.0


@pytest.fixture
def two_daemons(start_daemon, trivial_onnx, tmp_path):
    return start_daemon(_config(trivial_onnx, tmp_path / "a")), start_daemon(_config(trivial_onnx, tmp_path / "b"))


def test_round_robin_over_two_daemons_survives_one_stopping(two_daemons):
    a, b = two_daemons
    x = np.arange(64, dtype=np.float32)[None]
    with Client([a.address, b.address], timeout=10) as c:
        for _ in range(20):
            np.testing.assert_array_equal(c.infer("trivial", tensors={"x": x}).outputs["y"], x + 1)
        first_a, first_b = _served(a), _served(b)
        assert first_a + first_b == 20
        assert first_a >= 5 and first_b >= 5, (first_a, first_b)  # both took calls, about half each
        a.stop()
        # Not one failed call after the stop: calls that reach the stopped daemon's address are
        # answered UNAVAILABLE and retried on the other, or never picked once its connection is down.
        for _ in range(30):
            np.testing.assert_array_equal(c.infer("trivial", tensors={"x": x}).outputs["y"], x + 1)
    assert _served(a) == first_a
    assert _served(b) == first_b + 30


def test_async_client_spreads_calls_too(two_daemons):
    a, b = two_daemons
    x = np.ones((1, 64), np.float32)

    async def run():
        async with AsyncClient([a.address, b.address], timeout=10) as c:
            # One by one: calls made before both connections are up all go to the first one up.
            return [await c.infer("trivial", tensors={"x": x}) for _ in range(20)]

    for r in asyncio.run(run()):
        np.testing.assert_array_equal(r.outputs["y"], x + 1)
    assert _served(a) >= 5 and _served(b) >= 5, (_served(a), _served(b))


def test_targets_for_one_several_and_dns_addresses():
    assert channel_target("127.0.0.1:50051") == ("127.0.0.1:50051", [])  # one address: gRPC's defaults
    target, options = channel_target(["127.0.0.1:5001", "localhost:5002"])
    assert target == "ipv4:127.0.0.1:5001,127.0.0.1:5002"
    config = json.loads(dict(options)["grpc.service_config"])
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["methodConfig"][0]["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE", "CANCELLED"]
    target, options = channel_target("dns:///edgeinfer.default.svc.cluster.local:50051")
    assert target.startswith("dns:///") and "grpc.service_config" in dict(options)
    assert channel_target(["[::1]:5001", "[::1]:5002"])[0] == "ipv6:[::1]:5001,[::1]:5002"
    with pytest.raises(ValueError, match="host:port"):
        channel_target(["127.0.0.1", "127.0.0.2:1"])


def test_no_call_fails_while_a_daemon_stops_under_load(two_daemons):
    """Four threads call without pause while one daemon stops: calls in flight there finish
    (its grace period), calls that reach it as it closes (answered UNAVAILABLE, or CANCELLED
    when taken in but not started) are retried on the other."""
    a, b = two_daemons
    x = np.ones((1, 64), np.float32)
    failures, done = [], []
    stop = threading.Event()

    def caller(c):
        while not stop.is_set():
            try:
                c.infer("trivial", tensors={"x": x})
                done.append(time.monotonic())
            except Exception as exc:  # noqa: BLE001 - every failure is the test's finding
                failures.append(repr(exc))

    with Client([a.address, b.address], timeout=10) as c:
        threads = [threading.Thread(target=caller, args=(c,)) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        before = _served(a)
        stopped_at = time.monotonic()
        a.stop()
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(10)
    assert before > 0 and not failures, failures[:3]
    assert sum(t > stopped_at for t in done) > 10  # calls went on, on the other daemon
