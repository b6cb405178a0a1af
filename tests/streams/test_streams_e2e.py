"""Streams through a real daemon: the face video watched by two subscribers, bad sources, the API, the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from testkit.streams_kit import faces_model, wait_for

from edgeinfer.config import parse_config
from edgeinfer.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _nvdec_usable() -> bool:
    try:
        import PyNvVideoCodec  # noqa: F401

        from edgeinfer.runtime.gpu.memory import require_device

        require_device(0)
    except Exception:  # noqa: BLE001 - no library, no cuda-python, no GPU
        return False
    return True


@pytest.fixture(scope="module")
def bad_video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "notes.mp4"
    path.write_text("this is not a video\n" * 200)
    return path


@pytest.fixture(scope="module")
def served(start_daemon, centerface_onnx, face_video, bad_video, tmp_path_factory):
    """faces (CenterFace) and five streams: the looped face video, and four that cannot work."""
    cfg = parse_config({
        "server": {"workers": 4},
        "cache": {"dir": str(tmp_path_factory.mktemp("cache"))},
        "models": [faces_model(centerface_onnx)],
        "streams": [
            {"name": "cam", "source": str(face_video), "model": "faces", "fps": 8},
            {"name": "missing", "source": "/nonexistent/video.mp4", "model": "faces"},
            {"name": "noserver", "source": "rtsp://127.0.0.1:9/cam", "model": "faces"},
            {"name": "notvideo", "source": str(bad_video), "model": "faces"},
            {"name": "secret", "source": "rtsp://admin:hunter2@127.0.0.1:9/cam", "model": "faces"},
            {"name": "gpu", "source": str(face_video), "model": "faces", "fps": 1, "decode": "gpu"},
        ]}, base_dir=ROOT)
    return start_daemon(cfg)


@pytest.fixture(scope="module")
def client(served):
    from edgeinfer_client import Client

    with Client(served.address, timeout=30) as c:
        yield c


def test_two_subscribers_get_ordered_results_with_faces_and_a_slow_one_does_not_slow_the_other(served, client):
    from edgeinfer_client import Client

    fast_results, slow_results = [], []
    errors = []

    def watch(results, count, delay, queue_size):
        try:
            with Client(served.address) as c:
                for r in c.watch("cam", count=count, queue_size=queue_size, timeout=60):
                    results.append((time.monotonic(), r))
                    if delay:
                        time.sleep(delay)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    slow = threading.Thread(target=watch, args=(slow_results, 6, 1.0, 2))
    fast = threading.Thread(target=watch, args=(fast_results, 30, 0, 0))
    slow.start()
    fast.start()
    fast.join(90)
    slow.join(90)
    assert not errors, errors
    assert len(fast_results) == 30 and len(slow_results) == 6
    for results in (fast_results, slow_results):
        frames = [r.frame for _, r in results]
        assert frames == sorted(frames) and len(set(frames)) == len(frames), frames
        assert all(r.stream == "cam" and r.result.image_size == (176, 144) for _, r in results)
    for results in (fast_results, slow_results):
        with_face = sum(bool(r.detections) for _, r in results)
        assert with_face >= 0.95 * len(results), f"{with_face}/{len(results)} frames with a face"
    for _, r in fast_results:
        for d in r.detections:
            x1, y1, x2, y2 = d.box
            assert 0 <= x1 < x2 <= 176 and 0 <= y1 < y2 <= 144  # the frame's own pixels
    # The slow watcher (1 s a result) did not hold the fast one back: in step with it, 30 results
    # would take 30 s; at the stream's 8 fps they take about 4 (the bound leaves room for load).
    assert all(r.dropped == 0 for _, r in fast_results)
    fast_span = fast_results[-1][0] - fast_results[0][0]
    assert fast_span < 15, f"30 results took {fast_span:.1f} s"


def test_a_subscriber_that_never_reads_loses_its_oldest_results_and_holds_nothing_back(served, client):
    """gRPC's flow-control window buffers a slow reader's first hundreds of results, so the queue
    is shown full here directly: a subscriber on the daemon's loop that never reads."""
    import asyncio

    stream = served.daemon.streams.get("cam")
    sub = asyncio.run_coroutine_threadsafe(_subscribe(stream, 4), served.loop).result(5)
    try:
        got = [r.frame for r in client.watch("cam", count=16, timeout=30)]
        assert got == sorted(got) and len(got) == 16
        assert sub.dropped >= 8 and len(sub.queue) == 4
        assert [r.frame.index for r in sub.queue] == sorted(r.frame.index for r in sub.queue)
        assert sub.queue[-1].frame.index >= got[-2]  # it holds the newest results, not the first ones
    finally:
        served.loop.call_soon_threadsafe(stream.unsubscribe, sub)


async def _subscribe(stream, size):
    return stream.subscribe(size)


def test_list_streams_reports_each_state_and_reason(served, client):
    assert wait_for(lambda: all(s.reconnects >= 1 for s in client.streams() if s.name not in ("cam", "gpu")), 20)
    # Run alone, this test may come before the model's first result (a CUDA provider's first call
    # can take seconds); what it checks is the state once results flow.
    assert wait_for(lambda: next(s for s in client.streams() if s.name == "cam").fps_out > 2, 30)
    by = {s.name: s for s in client.streams()}
    cam = by["cam"]
    assert cam.state == "live" and cam.model == "faces" and (cam.width, cam.height) == (176, 144)
    assert cam.frames_in > cam.frames_processed > 0 and cam.decode == "cpu"
    assert 20 < cam.fps_in < 40 and cam.fps_out > 2
    assert by["missing"].state == "reconnecting"
    assert "file not found: /nonexistent/video.mp4" in by["missing"].last_error
    assert "retrying in" in by["missing"].state_reason
    assert "cannot connect to 127.0.0.1:9: Connection refused" in by["noserver"].last_error
    assert "not a video OpenCV/FFmpeg can decode" in by["notvideo"].last_error
    assert by["secret"].source == "rtsp://admin:***@127.0.0.1:9/cam"
    if _nvdec_usable():
        # NVDEC decodes; its frames stay on the GPU and the CPU model copies each one it takes down.
        assert by["gpu"].state == "live" and by["gpu"].decode == "gpu", by["gpu"].state_reason
        assert wait_for(lambda: next(s for s in client.streams() if s.name == "gpu").frames_processed >= 2, 20)
    else:
        # No PyNvVideoCodec / NVIDIA driver here: decode = "gpu" runs on the CPU and says why.
        assert by["gpu"].state == "live" and by["gpu"].decode == "cpu"
        assert by["gpu"].state_reason.startswith("GPU decode unavailable, decoding on the CPU: "), by["gpu"].state_reason
    assert "hunter2" not in by["secret"].last_error + by["secret"].state_reason


def test_the_daemon_keeps_serving_unary_requests(served, client, media):
    for _ in range(5):
        r = client.infer("faces", media / "astronaut.png")
        assert len(r.detections) == 1


def test_snapshot_is_a_jpeg_of_the_frame_with_boxes_when_asked(client):
    from edgeinfer_client import ClientError

    plain = client.snapshot("cam")
    boxed = client.snapshot("cam", draw_boxes=True)
    for data in (plain, boxed):
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (144, 176, 3)
    green = cv2.imdecode(np.frombuffer(boxed, np.uint8), cv2.IMREAD_COLOR)
    assert ((green[:, :, 1] > 200) & (green[:, :, 0] < 80) & (green[:, :, 2] < 80)).sum() > 50  # a drawn box
    with pytest.raises(ClientError, match="has no frame yet: reconnecting") as err:
        client.snapshot("missing")
    assert err.value.code == "UNAVAILABLE"
    with pytest.raises(ClientError, match=r"no stream named 'nope' \(streams: cam, gpu, missing") as err:
        client.snapshot("nope")
    assert err.value.code == "NOT_FOUND"
    with pytest.raises(ClientError, match="no stream named 'nope'"):
        list(client.watch("nope", count=1, timeout=10))


def test_metrics_show_stream_state_frames_and_latency(served):
    from prometheus_client import generate_latest

    text = generate_latest(served.daemon.metrics.registry).decode()
    assert 'edgeinfer_stream_state{state="live",stream="cam"} 1.0' in text
    assert 'edgeinfer_stream_state{state="reconnecting",stream="missing"} 1.0' in text
    assert 'edgeinfer_stream_frames_total{kind="processed",stream="cam"}' in text
    assert 'edgeinfer_stream_reconnects_total{stream="noserver"}' in text
    assert 'edgeinfer_stream_latency_seconds_count{stream="cam"}' in text


def _cli(address, *args, timeout=60):
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'daemon'}:{ROOT / 'clients'}")
    return subprocess.run([sys.executable, "-m", "edgeinfer_client.cli", "--address", address, *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_cli_watch_json_and_streams(served):
    out = _cli(served.address, "watch", "cam", "--json", "--count", "3")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == 3
    assert {"stream", "frame", "timestamp", "detections", "classes"} <= set(lines[0])
    assert lines[0]["stream"] == "cam" and lines[0]["frame"] < lines[1]["frame"] < lines[2]["frame"]
    out = _cli(served.address, "streams", "--json")
    assert out.returncode == 0, out.stderr
    states = {s["name"]: s["state"] for s in json.loads(out.stdout)}
    assert states["cam"] == "live" and states["missing"] == "reconnecting"
    out = _cli(served.address, "streams")
    assert out.returncode == 0 and "file not found: /nonexistent/video.mp4" in out.stdout


def test_cli_stream_takes_a_url_as_it_is(served):
    """rtsp://host:port/path goes to OpenCV untouched (it used to become rtsp:/host...)."""
    out = _cli(served.address, "stream", "--model", "faces", "rtsp://127.0.0.1:9/cam", timeout=60)
    assert out.returncode == 1
    assert "cannot open rtsp://127.0.0.1:9/cam as a video" in out.stderr, out.stderr


def test_config_checks_streams(centerface_onnx):
    base = {"models": [faces_model(centerface_onnx)]}
    with pytest.raises(ConfigError, match=r"\[streams.a\] model: no model 'cars' is configured \(configured: faces\)"):
        parse_config({**base, "streams": [{"name": "a", "source": "x.mp4", "model": "cars"}]})
    with pytest.raises(ConfigError, match=r"\[streams.a\] name: a stream of this name is already configured"):
        parse_config({**base, "streams": [{"name": "a", "source": "x.mp4", "model": "faces"}] * 2})
    with pytest.raises(ConfigError, match=r"\[streams.a\] decode: expected one of 'cpu', 'gpu', 'auto'"):
        parse_config({**base, "streams": [{"name": "a", "source": "x.mp4", "model": "faces", "decode": "nvdec"}]})
    with pytest.raises(ConfigError, match=r"\[streams.a\] fps0: unknown key"):
        parse_config({**base, "streams": [{"name": "a", "source": "x.mp4", "model": "faces", "fps0": 1}]})
    cfg = parse_config({**base, "streams": [{"name": "a", "source": "v/x.mp4", "model": "faces"},
                                            {"name": "b", "source": "rtsp://cam/x", "model": "faces"}]},
                       base_dir=Path("/srv/edge"))
    assert cfg.streams[0].source == "/srv/edge/v/x.mp4"  # relative to the config file
    assert cfg.streams[1].source == "rtsp://cam/x"       # URLs untouched


def test_check_config_names_the_streams_and_their_errors(tmp_path, centerface_onnx):
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'daemon'}:{ROOT / 'clients'}")
    good = tmp_path / "good.toml"
    good.write_text(f'[[models]]\nname = "faces"\nonnx = "{centerface_onnx}"\n\n'
                    '[[streams]]\nname = "door"\nsource = "rtsp://cam.local:554/s"\nmodel = "faces"\n')
    out = subprocess.run([sys.executable, "-m", "edgeinfer.cli", "check-config", str(good)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and "OK (1 model(s): faces; 1 stream(s): door)" in out.stdout, out
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace('model = "faces"', 'model = "cars"'))
    out = subprocess.run([sys.executable, "-m", "edgeinfer.cli", "check-config", str(bad)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2
    assert "[streams.door] model: no model 'cars' is configured (configured: faces)" in out.stderr


def test_cli_stream_of_a_url_without_opencv_says_what_to_install(served):
    code = ("import sys; sys.modules['cv2'] = None\n"
            "from edgeinfer_client.cli import main\n"
            f"sys.exit(main(['--address', '{served.address}', 'stream', '--model', 'faces', 'rtsp://cam:554/x']))")
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'clients'}")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 1
    assert "reading a stream URL or camera needs OpenCV" in out.stderr
    assert "pip install opencv-python-headless" in out.stderr
