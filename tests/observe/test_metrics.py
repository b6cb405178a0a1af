"""Prometheus metrics: served over real HTTP by a real daemon, parsed, linted."""
from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import types
import urllib.request

import pytest
from testkit.daemon_thread import DaemonThread
from prometheus_client.parser import text_string_to_metric_families

from edgeinfer_client import Client, ClientError


def _config(models, tmp_path):
    from edgeinfer.config import parse_config

    return parse_config({"server": {"workers": 2}, "cache": {"dir": str(tmp_path)}, "models": models},
                        source="test_metrics")


def _faces(name, onnx, **batching):
    return {"name": name, "onnx": str(onnx), "backends": "auto", "warmup_runs": 1,
            "input": {"resize": "letterbox", "size": [640, 480], "pad_value": 0},
            "postprocess": {"task": "centerface"}, "batching": batching}


def _start_with_metrics(pytestconfig, config, listen="127.0.0.1:0"):
    d = DaemonThread(config)  # picks a free gRPC port, turns metrics off ...
    config.metrics.enabled = True  # ... which these tests want on
    config.metrics.listen = listen
    return d.start()


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return resp.read().decode()


def _samples(text: str) -> dict:
    """{sample name: [(labels, value), ...]} from the text exposition."""
    out: dict = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def _value(samples, name, **labels):
    hits = [v for lab, v in samples.get(name, []) if all(lab.get(k) == w for k, w in labels.items())]
    assert len(hits) == 1, (name, labels, samples.get(name))
    return hits[0]


@pytest.fixture(scope="module")
def served(pytestconfig, centerface_onnx, classifier_onnx, media, tmp_path_factory):
    cfg = _config([
        _faces("faces", centerface_onnx, max_batch=2, max_queue_delay_us=1000),
        # The classifier with the wrong input size: the model fails to load, the daemon serves on.
        {"name": "broken", "onnx": str(classifier_onnx), "backends": "auto",
         "input": {"size": [320, 320]}, "postprocess": {"task": "classification"}},
    ], tmp_path_factory.mktemp("cache"))
    d = _start_with_metrics(pytestconfig, cfg)
    with Client(d.address, timeout=60) as c:
        for _ in range(3):
            assert len(c.infer("faces", media / "astronaut.png").detections) == 1
        for model, image, code in [("nope", b"x", "NOT_FOUND"), ("faces", b"not an image", "INVALID_ARGUMENT"),
                                   ("broken", (media / "coffee.png").read_bytes(), "UNAVAILABLE")]:
            with pytest.raises(ClientError) as info:
                c.infer(model, image)
            assert info.value.code == code
    yield d
    d.stop()


def test_endpoint_served_over_http_and_parsed(served):
    port = served.daemon.metrics_endpoint.port
    assert port and served.daemon.metrics_endpoint.running
    s = _samples(_scrape(port))
    # Requests by model and status; a name that is not served does not mint a series.
    assert _value(s, "edgeinfer_requests_total", model="faces", code="OK") == 3
    assert _value(s, "edgeinfer_requests_total", model="faces", code="INVALID_ARGUMENT") == 1
    assert _value(s, "edgeinfer_requests_total", model="broken", code="UNAVAILABLE") == 1
    assert _value(s, "edgeinfer_requests_total", model="(unknown)", code="NOT_FOUND") == 1
    assert not [lab for lab, _ in s["edgeinfer_requests_total"] if lab["model"] == "nope"]
    # Latency histograms per stage, each with the 3 successful requests.
    for stage in ("queue", "preprocess", "inference", "postprocess", "total"):
        assert _value(s, "edgeinfer_request_latency_seconds_count", model="faces", stage=stage) == 3
    total = _value(s, "edgeinfer_request_latency_seconds_sum", model="faces", stage="total")
    inference = _value(s, "edgeinfer_request_latency_seconds_sum", model="faces", stage="inference")
    assert total >= inference > 0
    assert _value(s, "edgeinfer_batch_size_sum", model="faces") == 3  # max_batch 2: the batched lane
    assert _value(s, "edgeinfer_queue_depth", model="faces") == 0
    assert _value(s, "edgeinfer_requests_in_flight", model="faces") == 0
    assert _value(s, "edgeinfer_deadline_expired_total", model="faces") == 0
    assert _value(s, "edgeinfer_queue_full_total", model="faces") == 0
    assert _value(s, "process_resident_memory_bytes") > 50e6  # onnxruntime + OpenCV are in there
    assert _value(s, "edgeinfer_build_info", version=__import__("edgeinfer").__version__) == 1


def test_model_state_and_fallback_chain(served):
    s = _samples(_scrape(served.daemon.metrics_endpoint.port))
    for model, current in (("faces", "ready"), ("broken", "failed")):
        for state in ("loading", "ready", "failed"):
            assert _value(s, "edgeinfer_model_state", model=model, state=state) == (state == current)
    assert _value(s, "edgeinfer_model_info", model="faces", backend="onnxruntime", precision="fp32",
                  device="cpu", max_batch="2") == 1
    assert not [lab for lab, _ in s.get("edgeinfer_model_info", []) if lab["model"] == "broken"]
    attempts = [lab for lab, _ in s["edgeinfer_model_load_attempt_info"] if lab["model"] == "faces"]
    outcomes = [(a["step"], a["backend"], a["precision"], a["outcome"]) for a in attempts]
    # No TensorRT here: the chain says it was skipped and why, then ONNX Runtime served.
    assert outcomes == [("0", "tensorrt", "fp32", "skipped"), ("1", "onnxruntime", "fp32", "selected")]
    assert attempts[0]["reason"]
    assert _value(s, "edgeinfer_model_load_seconds", model="faces") > 0


def test_promtool_accepts_the_exposition(served):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian/Ubuntu: apt-get install prometheus)")
    text = _scrape(served.daemon.metrics_endpoint.port)
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_port_in_use_is_an_error_and_grpc_keeps_serving(pytestconfig, centerface_onnx, media, tmp_path, caplog,
                                                        served):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    caplog.set_level(logging.ERROR, logger="edgeinfer.process.daemon")
    d = _start_with_metrics(pytestconfig, _config([_faces("other", centerface_onnx)], tmp_path),
                            listen=f"127.0.0.1:{port}")
    try:
        endpoint = d.daemon.metrics_endpoint
        assert not endpoint.running
        assert f"cannot listen on 127.0.0.1:{port}: address already in use" in endpoint.error
        assert any("address already in use" in r.getMessage() for r in caplog.records)
        with Client(d.address, timeout=60) as c:
            assert len(c.infer("other", media / "astronaut.png").detections) == 1
        # Each daemon has its own registry: neither sees the other's models.
        from prometheus_client import generate_latest

        mine = generate_latest(d.daemon.metrics.registry).decode()
        theirs = _scrape(served.daemon.metrics_endpoint.port)
        assert 'model="other"' in mine and 'model="faces"' not in mine
        assert 'model="other"' not in theirs
        # Once the port is free, the tick's retry brings the endpoint up.
        taken.close()
        endpoint.retry_s = 0.0
        _wait(lambda: endpoint.running, "the endpoint to start after the port was freed")
        assert 'model="other"' in _scrape(port)
    finally:
        taken.close()
        d.stop()


def _wait(predicate, what, timeout=10.0):
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# -- GPU collector, without a GPU -------------------------------------------------------

class _FakeNvml(types.SimpleNamespace):
    """The few pynvml calls the collector makes, answering like one 80 GB H100."""

    def __init__(self):
        super().__init__(shut=False)

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        self.shut = True

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return f"handle{i}"

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetMemoryInfo(self, h):
        return types.SimpleNamespace(used=3 << 30, total=80 << 30, free=77 << 30)

    def nvmlDeviceGetUtilizationRates(self, h):
        return types.SimpleNamespace(gpu=42, memory=10)


def _collect(collector):
    return {s.name: (s.labels, s.value) for fam in collector.collect() for s in fam.samples}


def test_gpu_collector_reads_nvml():
    from edgeinfer.observe.metrics import GpuCollector

    nvml = _FakeNvml()
    c = GpuCollector(nvml=nvml)
    got = _collect(c)
    assert got["edgeinfer_gpu_memory_used_bytes"] == ({"gpu": "0", "name": "NVIDIA H100 80GB HBM3"}, 3 << 30)
    assert got["edgeinfer_gpu_memory_total_bytes"][1] == 80 << 30
    assert got["edgeinfer_gpu_utilization_ratio"] == (
        {"gpu": "0", "name": "NVIDIA H100 80GB HBM3", "source": "nvml"}, 0.42)
    c.close()
    assert nvml.shut and _collect(c) == {}


def test_gpu_collector_falls_back_to_jetson_sysfs(tmp_path):
    from edgeinfer.observe.metrics import GpuCollector

    class NoDriver(_FakeNvml):
        def nvmlInit(self):
            raise OSError("NVML Shared Library Not Found")

    load = tmp_path / "17000000.gpu" / "load"
    load.parent.mkdir()
    load.write_text("734\n")
    c = GpuCollector(nvml=NoDriver(), sysfs_globs=[str(tmp_path / "*gpu*" / "load")])
    assert c.source == "sysfs"
    got = _collect(c)
    assert got == {"edgeinfer_gpu_utilization_ratio": ({"gpu": "0", "name": "jetson", "source": "sysfs"}, 0.734)}
    # Neither NVML nor sysfs: nothing exported, nothing raised.
    none = GpuCollector(nvml=NoDriver(), sysfs_globs=[str(tmp_path / "absent" / "load")])
    assert none.source == "none" and _collect(none) == {}


@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:9400", ("127.0.0.1", 9400)),
    (":9400", ("0.0.0.0", 9400)),
    ("[::1]:9400", ("::1", 9400)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
])
def test_parse_listen(text, expected):
    from edgeinfer.listen import parse_listen

    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["9400", "host:", "host:99999", "host:http"])
def test_parse_listen_refuses(text):
    from edgeinfer.listen import parse_listen

    with pytest.raises(ValueError, match=r"\[metrics\] listen: expected host:port"):
        parse_listen(text)


# -- Grafana dashboard ------------------------------------------------------------------

def _dashboard_exprs():
    import json
    from pathlib import Path

    dash = json.loads((Path(__file__).resolve().parents[2] / "configs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 10
    return exprs


def test_dashboard_uses_only_exported_metric_names(served):
    import re

    from edgeinfer.observe.metrics import METRIC_NAMES

    exported = set(_samples(_scrape(served.daemon.metrics_endpoint.port)))
    gpu = {n for n in METRIC_NAMES if n.startswith("edgeinfer_gpu_")}  # no GPU here
    used = set()
    for expr in _dashboard_exprs():
        used |= set(re.findall(r"\b((?:edgeinfer|process)_[a-z_]+)\b", expr))
    assert used, "the dashboard queries no edgeinfer metric"
    unknown = sorted(n for n in used if n not in exported and n not in gpu)
    assert not unknown, f"dashboard queries metrics the daemon does not export: {unknown}"
    # And every documented name is exported (GPU ones only where a GPU is).
    base = {re.sub(r"_(bucket|sum|count)$", "", n) for n in exported}
    assert not sorted(set(METRIC_NAMES) - base - gpu), "METRIC_NAMES lists names the daemon does not export"


def test_promtool_accepts_the_dashboard_queries(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian/Ubuntu: apt-get install prometheus)")
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(_dashboard_exprs()):
        for var, value in (("$__rate_interval", "5m"), ("$job", ".*"), ("$instance", ".*"), ("$model", ".*")):
            expr = expr.replace(var, value)
        lines += [f"      - record: dashboard:query{i}", f"        expr: '{expr}'"]
    rules = tmp_path / "rules.yml"
    rules.write_text("\n".join(lines) + "\n")
    proc = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
