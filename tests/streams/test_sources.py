"""Opening sources: every failure says what was wrong with the source, and none hangs."""
from __future__ import annotations

import socket
import time

import pytest

from edgeinfer.config import SOURCE_DEVICE, SOURCE_FILE, SOURCE_GSTREAMER, SOURCE_URL, StreamConfig, source_kind
from edgeinfer.streams.decode import open_source
from edgeinfer.streams.sources import SourceError, open_cpu, redact


def _cfg(source, **kw) -> StreamConfig:
    return StreamConfig(name="t", source=str(source), model="m", stall_timeout_s=1.0, **kw)


def test_kinds_and_redaction():
    assert source_kind("rtsp://cam.local:554/stream") == SOURCE_URL
    assert source_kind("/dev/video0") == source_kind("0") == SOURCE_DEVICE
    assert source_kind("/srv/a.mp4") == SOURCE_FILE
    assert source_kind("nvarguscamerasrc ! video/x-raw(memory:NVMM) ! nvvidconv ! videoconvert") == SOURCE_GSTREAMER
    assert redact("rtsp://admin:secret@cam.local:554/s") == "rtsp://admin:***@cam.local:554/s"
    assert redact("rtsp://cam.local/s") == "rtsp://cam.local/s"


def test_a_file_opens_and_reads_frames(face_video):
    src = open_cpu(_cfg(face_video))
    try:
        assert src.is_file and src.native_fps == pytest.approx(30, abs=1)
        assert src.read().shape == (144, 176, 3)
    finally:
        src.close()


def test_missing_file(tmp_path):
    with pytest.raises(SourceError, match=r"file not found: .*gone\.mp4"):
        open_cpu(_cfg(tmp_path / "gone.mp4"))


def test_a_file_that_is_not_a_video(tmp_path):
    bogus = tmp_path / "notes.mp4"
    bogus.write_text("not a video at all\n" * 100)
    with pytest.raises(SourceError, match="not a video OpenCV/FFmpeg can decode"):
        open_cpu(_cfg(bogus))


def test_a_url_with_no_server_fails_at_once():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens
    started = time.monotonic()
    with pytest.raises(SourceError, match=rf"cannot connect to 127.0.0.1:{port}: Connection refused"):
        open_cpu(_cfg(f"rtsp://127.0.0.1:{port}/cam"))
    assert time.monotonic() - started < 1.0


def test_an_unsupported_scheme():
    with pytest.raises(SourceError, match="unsupported URL scheme 'gopher'"):
        open_cpu(_cfg("gopher://127.0.0.1/x"))


def test_gstreamer_pipelines_need_an_opencv_built_with_it():
    from edgeinfer.streams.sources import gstreamer_available

    if gstreamer_available():
        pytest.skip("this OpenCV has GStreamer")
    with pytest.raises(SourceError, match="this OpenCV build has no GStreamer"):
        open_cpu(_cfg("videotestsrc ! videoconvert"))


def test_gpu_decode_falls_back_to_cpu_with_the_reason(face_video):
    """No PyNvVideoCodec or no NVIDIA driver here: the CPU decodes and the note says why."""
    try:
        import PyNvVideoCodec  # noqa: F401
        pytest.skip("PyNvVideoCodec is installed: the fallback is not what runs")
    except ImportError:
        pass
    src, note = open_source(_cfg(face_video, decode="auto"))
    try:
        assert src.decode == "cpu"
        assert note.startswith("GPU decode unavailable, decoding on the CPU: PyNvVideoCodec is not installed")
    finally:
        src.close()


def test_an_http_mjpeg_camera_opens_and_reads(face_video):
    """An IP camera's MJPEG over HTTP (multipart/x-mixed-replace), served on loopback."""
    import http.server
    import threading

    import cv2

    cap = cv2.VideoCapture(str(face_video))
    jpegs = []
    for _ in range(30):
        ok, frame = cap.read()
        jpegs.append(cv2.imencode(".jpg", frame)[1].tobytes())
    cap.release()

    class Camera(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            try:
                for i in range(300):
                    jpeg = jpegs[i % len(jpegs)]
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                     + f"Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n")
                    time.sleep(0.01)
            except OSError:  # the client went away
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Camera)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        src = open_cpu(_cfg(f"http://127.0.0.1:{server.server_address[1]}/video.mjpg"))
        try:
            assert not src.is_file
            frames = [src.read() for _ in range(10)]
            assert all(f.shape == (144, 176, 3) for f in frames)
        finally:
            src.close()
    finally:
        server.shutdown()
        server.server_close()


def test_the_config_resolves_only_files_against_its_folder(tmp_path, centerface_onnx):
    """One decision of what a source names (config.source_kind), for the config and the opener."""
    from edgeinfer.config import parse_config

    sources = {"file": "clips/door.mp4", "index": "0", "v4l2": "/dev/video2",
               "url": "rtsp://cam.local:554/stream", "pipe": "videotestsrc ! videoconvert ! appsink"}
    cfg = parse_config({"models": [{"name": "faces", "onnx": str(centerface_onnx)}],
                        "streams": [{"name": n, "source": s, "model": "faces"} for n, s in sources.items()]},
                       base_dir=tmp_path)
    got = {s.name: s.source for s in cfg.streams}
    assert got == {**sources, "file": str(tmp_path / "clips" / "door.mp4")}
