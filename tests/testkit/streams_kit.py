"""Helpers for stream tests: a real RTSP server process, the faces model table, polling."""
from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SERVER = ROOT / "tests" / "testkit" / "rtsp_server.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rtsp_server_missing() -> str:
    if not Path(SYSTEM_PYTHON).exists():
        return f"no system Python at {SYSTEM_PYTHON}"
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
                            "from gi.repository import GstRtspServer; gi.require_version('Gst', '1.0'); "
                            "from gi.repository import Gst; Gst.init(None); "
                            "assert Gst.ElementFactory.find('mpeg4videoparse') and Gst.ElementFactory.find('qtdemux')"], capture_output=True, text=True)
    if probe.returncode:
        return ("GStreamer's RTSP server is not installed (Debian: apt-get install python3-gi "
                "gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp gstreamer1.0-plugins-good gstreamer1.0-plugins-bad)")
    return ""


class RtspServer:
    """GStreamer's RTSP server in its own process (tests/testkit/rtsp_server.py), restartable on one port."""

    def __init__(self, video: Path):
        self.video = video
        self.port = free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/test"
        self.proc = None

    def start(self) -> "RtspServer":
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        self.proc = subprocess.Popen([SYSTEM_PYTHON, str(RTSP_SERVER), str(self.port), str(self.video)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.proc.kill()
            raise RuntimeError(f"RTSP server did not start: {line} {self.proc.stdout.read()}")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def faces_model(onnx: Path) -> dict:
    """The demo's CenterFace model table (configs/dev.toml)."""
    return {"name": "faces", "onnx": str(onnx),
            "input": {"color": "rgb", "resize": "letterbox", "size": [640, 480], "pad_value": 0},
            "postprocess": {"task": "centerface", "score_threshold": 0.5, "nms_iou_threshold": 0.3}}


def wait_for(predicate, timeout: float, step: float = 0.05):
    """Poll until predicate() is truthy; returns its value, or None after `timeout` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return None
