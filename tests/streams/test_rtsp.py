"""A real RTSP server on loopback (GStreamer's, started by the test): results flow, survive the
server's death and its stall, and unary requests never fail meanwhile."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from testkit.streams_kit import faces_model, wait_for

from edgeinfer.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
STALL_S = 2.0
RECONNECT_MAX_S = 2.0


@pytest.fixture
def served(start_daemon, centerface_onnx, rtsp_server, tmp_path):
    cfg = parse_config({
        "cache": {"dir": str(tmp_path / "cache")},
        "models": [faces_model(centerface_onnx)],
        "streams": [{"name": "door", "source": rtsp_server.url, "model": "faces", "fps": 5,
                     "rtsp_transport": "tcp", "stall_timeout_s": STALL_S, "reconnect_max_s": RECONNECT_MAX_S}],
    }, base_dir=ROOT)
    d = start_daemon(cfg)
    yield d
    d.stop()


class UnaryLoad:
    """Unary face requests in a loop on their own thread; every failure is kept."""

    def __init__(self, address: str, image: Path):
        from edgeinfer_client import Client

        self.client = Client(address, timeout=30)
        self.image = image.read_bytes()
        self.ok = 0
        self.failures: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.client.infer("faces", self.image)
                self.ok += 1
            except Exception as exc:  # noqa: BLE001 - collected for the assertion
                self.failures.append(exc)
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)
        self.client.close()


def _state(client, name="door"):
    return next(s for s in client.streams() if s.name == name)


@pytest.mark.slow
def test_rtsp_results_survive_the_server_dying_and_stalling(served, rtsp_server, media):
    from edgeinfer_client import Client

    with Client(served.address, timeout=30) as client, UnaryLoad(served.address, media / "astronaut.png") as load:
        first = list(client.watch("door", count=5, timeout=30))
        assert len(first) == 5 and sum(bool(r.detections) for r in first) >= 4
        assert _state(client).state == "live"

        # The server dies: the stream goes to reconnecting and says why.
        rtsp_server.kill()
        assert wait_for(lambda: _state(client).state == "reconnecting", STALL_S + 3), _state(client)
        down = _state(client)
        assert down.last_error and "retrying in" in down.state_reason
        time.sleep(1.0)  # a failed attempt or two against the dead port
        rtsp_server.start()
        restarted = time.monotonic()
        resumed = next(iter(client.watch("door", count=1, timeout=30)))
        waited = time.monotonic() - restarted
        # Within the backoff bound (one reconnect_max_s) plus an open and a first frame.
        assert waited < RECONNECT_MAX_S + STALL_S + 2, f"results resumed {waited:.1f} s after the restart"
        assert resumed.frame > first[-1].frame
        assert _state(client).reconnects >= 1

        # The server stalls (stopped, connection kept open): detected within stall_timeout_s.
        reconnects_before = _state(client).reconnects
        os.kill(rtsp_server.proc.pid, signal.SIGSTOP)
        try:
            # Measured from the last frame the daemon captured, not from the SIGSTOP: frames the
            # RTSP client had buffered still arrive after it, later on a loaded machine.
            last_count, last_frame_at, seen = -1, time.monotonic(), None
            end = time.monotonic() + STALL_S + 15
            while time.monotonic() < end:
                s = _state(client)
                now = time.monotonic()
                if s.state in ("stalled", "reconnecting"):
                    seen = now
                    break
                if s.frames_in != last_count:
                    last_count, last_frame_at = s.frames_in, now
                time.sleep(0.05)
            assert seen is not None, _state(client)
            detected = seen - last_frame_at
            assert detected < STALL_S + 1.5, f"stall seen {detected:.1f} s after the last frame"
            assert wait_for(lambda: "no frame" in _state(client).last_error, 2), _state(client)
        finally:
            os.kill(rtsp_server.proc.pid, signal.SIGCONT)
        again = next(iter(client.watch("door", count=1, timeout=RECONNECT_MAX_S + STALL_S + 10)))
        assert again.frame > resumed.frame
        # Whichever saw it first (the stall watchdog, or FFmpeg's read timeout of the same length),
        # the silent server was left and connected to again.
        assert _state(client).reconnects > reconnects_before
    assert load.ok > 10 and not load.failures, load.failures[:3]
