"""The CLIs as a person runs them: `edgeinfer serve` in its own process, `edgeinfer-client` calls."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client(address: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "edgeinfer-client"), "--address", address, *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def served(centerface_onnx, classifier_onnx, tmp_path_factory):
    port = _free_port()
    address = f"127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = dict(os.environ, CACHE_DIRECTORY=str(log.parent / "cache"))
    with open(log, "w") as fh:
        proc = subprocess.Popen([str(BIN / "edgeinfer"), "serve", "--config", str(ROOT / "configs" / "dev.toml"),
                                 "--listen", address], stdout=fh, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if _client(address, "health").stdout.strip() == "SERVING":
            break
        assert proc.poll() is None, log.read_text()
        time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("daemon did not become ready:\n" + log.read_text())
    yield address, proc, log
    if proc.poll() is None:
        proc.kill()


@pytest.mark.slow
def test_infer_json_is_exactly_one_object(served, media):
    address, _, _ = served
    res = _client(address, "infer", "--model", "imagenet", str(media / "coffee.png"), "--json")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1
    obj = json.loads(lines[0])
    assert set(obj) == {"model", "model_version", "request_id", "backend", "precision", "image_size", "classes",
                        "detections", "outputs", "timing_us", "batch_size"}
    assert obj["model"] == "imagenet" and obj["detections"] == [] and obj["batch_size"] == 1
    assert obj["image_size"] == [600, 400] and obj["backend"] == "onnxruntime" and obj["precision"] == "fp32"
    assert obj["model_version"] == "1"
    assert obj["classes"][0] == {"index": 967, "label": "espresso", "score": obj["classes"][0]["score"]}
    assert all(isinstance(v, int) for v in obj["timing_us"].values())


def test_infer_faces_json(served, media):
    address, _, _ = served
    obj = json.loads(_client(address, "infer", "--model", "faces", str(media / "astronaut.png"), "--json").stdout)
    assert obj["classes"] == [] and len(obj["detections"]) == 1
    assert set(obj["detections"][0]) == {"box", "score", "label", "class_index", "landmarks"}
    assert len(obj["detections"][0]["box"]) == 4 and len(obj["detections"][0]["landmarks"]) == 5


@pytest.mark.slow
def test_stream_json_one_line_per_frame(served, media):
    address, _, _ = served
    res = _client(address, "stream", "--model", "faces", str(media / "carphone_pristine.mp4"), "--json")
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(lines) == 120
    assert sum(len(o["detections"]) == 1 for o in lines) >= 114


def test_failures_exit_non_zero_with_a_message(served, media, tmp_path):
    address, _, _ = served
    res = _client(address, "infer", "--model", "nope", str(media / "coffee.png"))
    assert res.returncode == 1 and "NOT_FOUND" in res.stderr and "nope" in res.stderr
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 broken")
    res = _client(address, "infer", "--model", "faces", str(bad))
    assert res.returncode == 1 and "INVALID_ARGUMENT" in res.stderr
    res = _client(address, "infer", "--model", "faces", str(tmp_path / "missing.png"))
    assert res.returncode == 1 and "missing.png" in res.stderr
    dead = _client(f"127.0.0.1:{_free_port()}", "--timeout", "2", "models")
    assert dead.returncode == 1 and "UNAVAILABLE" in dead.stderr


def test_models_and_health(served):
    address, _, _ = served
    res = _client(address, "models")
    assert res.returncode == 0 and "faces" in res.stdout and "imagenet" in res.stdout and "ready" in res.stdout
    assert _client(address, "health", "faces").stdout.strip() == "SERVING"
    models = subprocess.run([str(BIN / "edgeinfer"), "models", "--config", str(ROOT / "configs" / "dev.toml")],
                            capture_output=True, text=True, timeout=60)
    # dev.toml names 127.0.0.1:50051, not this test's port: it lists the configured models
    assert models.returncode == 0 and "faces" in models.stdout


def test_sigterm_stops_cleanly(served):
    address, proc, log = served
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    text = log.read_text()
    assert "shutting down" in text and "stopped" in text


@pytest.mark.slow
def test_serve_with_two_processes_answers_and_stops_cleanly_on_sigterm(centerface_onnx, classifier_onnx, tmp_path):
    """`[server] processes = 2` through `edgeinfer serve`: one supervisor, two daemons, one port; SIGTERM
    from the operator (systemd stop) ends all three with status 0."""
    text = (ROOT / "configs" / "dev.toml").read_text().replace("../assets", str(ROOT / "assets"))
    text = text.replace("[server]\n", "[server]\nprocesses = 2\n", 1).replace("[metrics]\n", "[metrics]\nenabled = false\n", 1)
    config = tmp_path / "two.toml"
    config.write_text(text)
    address = f"127.0.0.1:{_free_port()}"
    log = tmp_path / "serve.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([str(BIN / "edgeinfer"), "serve", "--config", str(config), "--listen", address],
                                stdout=fh, stderr=subprocess.STDOUT, env=dict(os.environ, CACHE_DIRECTORY=str(tmp_path)))
    try:
        deadline = time.monotonic() + 90
        while _client(address, "health").stdout.strip() != "SERVING":
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        children = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        assert len(children) >= 2, children  # the two daemons (multiprocessing may add its resource tracker)
        res = _client(address, "infer", "--model", "imagenet", str(ROOT / "assets" / "media" / "coffee.png"), "--json")
        assert res.returncode == 0 and json.loads(res.stdout)["classes"][0]["label"] == "espresso", res.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
        for pid in children:
            end = time.monotonic() + 10
            while Path(f"/proc/{pid}").exists() and time.monotonic() < end:
                time.sleep(0.1)
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3], \
                f"process {pid} outlived the supervisor"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_while_models_load_stops_cleanly(centerface_onnx, media, tmp_path):
    """SIGTERM in the middle of a load (here: an fp16 conversion, then ONNX Runtime's session) ends
    the load at its next step and exits 0: the loader thread is waited for, never left inside a
    runtime's native code while the interpreter exits (that aborted the process)."""
    config = tmp_path / "edgeinfer.toml"
    config.write_text(f'[metrics]\nenabled = false\n[cache]\ndir = "{tmp_path / "cache"}"\n'
                      f'[[models]]\nname = "faces"\nonnx = "{centerface_onnx}"\nprecision = ["fp16"]\n'
                      f'[models.input]\nresize = "letterbox"\nsize = [640, 480]\n[models.postprocess]\ntask = "centerface"\n'
                      f'[models.calibration]\nvalidation = "{media}"\n')
    log = tmp_path / "serve.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([str(BIN / "edgeinfer"), "serve", "--config", str(config),
                                 "--listen", f"127.0.0.1:{_free_port()}"], stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "fp16" not in log.read_text() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "terminate called" not in text and "loading stopped: the daemon is shutting down" in text
