"""Stopping the daemon ends its streams and their watchers at once, not after the grace period."""
from __future__ import annotations

import threading
import time
from pathlib import Path

from testkit.streams_kit import faces_model, wait_for

from edgeinfer.config import parse_config

ROOT = Path(__file__).resolve().parents[2]


def test_stop_ends_watchers_cleanly_and_promptly(start_daemon, centerface_onnx, face_video, tmp_path):
    from edgeinfer_client import Client

    cfg = parse_config({
        "server": {"grace_period_s": 20},
        "cache": {"dir": str(tmp_path / "cache")},
        "models": [faces_model(centerface_onnx)],
        "streams": [{"name": "cam", "source": str(face_video), "model": "faces", "fps": 5}],
    }, base_dir=ROOT)
    d = start_daemon(cfg)
    got, outcome = [], []

    def watch():
        try:
            with Client(d.address) as c:
                for r in c.watch("cam"):
                    got.append(r.frame)
            outcome.append("ended")
        except Exception as exc:  # noqa: BLE001 - reported below
            outcome.append(exc)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    assert wait_for(lambda: len(got) >= 2, 30)
    started = time.monotonic()
    d.stop()
    t.join(10)
    took = time.monotonic() - started
    assert outcome == ["ended"], outcome  # the call ended with OK, not cancelled at the grace's end
    assert took < 10, f"stop took {took:.1f} s (grace period 20 s)"
    capture = d.daemon.streams.get("cam").capture
    assert capture.state.value == "stopped" and capture.state_reason == "the daemon is stopping"
