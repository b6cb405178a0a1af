"""Opening a video source: files, RTSP/HTTP(S) URLs, V4L2 devices, GStreamer pipelines.

CPU decode is OpenCV's FFmpeg backend, opened with an open and a read timeout
(CAP_PROP_OPEN_TIMEOUT_MSEC / CAP_PROP_READ_TIMEOUT_MSEC): FFmpeg's interrupt
callback then ends a blocked connect or read. Measured on the dev box: a server
that accepts and never answers ends the open after the timeout (2.0 s for 2 s),
where OpenCV's default waits 30 s; a refused port answers at once
(docs/decisions.md says why not PyAV). Every failure is a `SourceError` whose
message says what was wrong with the source, never a bare "cannot open".

`decode = "gpu"` is `NvdecSource` (streams/nvdec.py); streams/decode.py picks
between the two.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from edgeinfer.config import SOURCE_DEVICE, SOURCE_FILE, SOURCE_URL, StreamConfig, source_kind

log = logging.getLogger(__name__)

URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")

# OpenCV reads FFmpeg options (RTSP transport) from this variable when a capture opens;
# it is process-wide, so opens that set it take turns.
_FFMPEG_OPTIONS = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_env_lock = threading.Lock()


class SourceError(Exception):
    """The source could not be opened or read; the message says why, for the stream's state."""


def redact(source: str) -> str:
    """The source without a password (rtsp://user:***@cam/...), for logs and the API."""
    if "://" not in source:
        return source
    try:
        parts = urlsplit(source)
    except ValueError:
        return source
    if parts.password is None:
        return source
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def gstreamer_available() -> bool:
    info = cv2.getBuildInformation()
    for line in info.splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False


class Source:
    """An open source: `grab()` decodes the next frame and `retrieve()` gives its pixels (BGR,
    HxWx3 uint8), so a frame the capture skips is decoded (the next ones depend on it) but never
    converted or copied; `read()` is both. Each raises SourceError on the source's end or failure.
    `native_fps` is what the source says (0 = unknown)."""

    decode = "cpu"

    def grab(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def retrieve(self) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def read(self) -> np.ndarray:
        self.grab()
        return self.retrieve()

    def rewind(self) -> bool:
        """Files: back to the first frame (False: cannot, reopen instead)."""
        return False

    def close(self) -> None:  # pragma: no cover - interface
        pass

    native_fps: float = 0.0
    is_file: bool = False


class CvSource(Source):
    """OpenCV VideoCapture (FFmpeg for files and URLs, V4L2 for devices, GStreamer for pipelines)."""

    def __init__(self, cap, description: str, is_file: bool):
        self.cap = cap
        self.description = description
        self.is_file = is_file
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.native_fps = float(fps) if fps and 0 < fps < 1000 else 0.0

    def _no_frame(self) -> SourceError:
        return SourceError("end of file" if self.is_file else f"{self.description}: no frame (read failed or timed out)")

    def grab(self) -> None:
        if not self.cap.grab():
            raise self._no_frame()

    def retrieve(self) -> np.ndarray:
        # The colour conversion (a fifth to a third of a 1080p frame's CPU time) happens here only.
        ok, frame = self.cap.retrieve()
        if not ok or frame is None:
            raise self._no_frame()
        return frame

    def rewind(self) -> bool:
        return bool(self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0))

    def close(self) -> None:
        self.cap.release()


def _probe_tcp(source: str, timeout_s: float) -> None:
    """A clear message for a URL whose host does not answer (OpenCV only says 'not opened')."""
    try:
        parts = urlsplit(source)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise SourceError(f"{redact(source)}: not a valid URL ({exc})") from None
    if not host:
        raise SourceError(f"{redact(source)}: the URL names no host")
    if port is None:
        port = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443, "rtmp": 1935}.get(parts.scheme)
    if port is None or parts.scheme in ("udp", "srt"):
        return
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except socket.timeout:
        raise SourceError(f"{redact(source)}: no answer from {host}:{port} within {timeout_s:g} s") from None
    except OSError as exc:
        raise SourceError(f"{redact(source)}: cannot connect to {host}:{port}: {exc.strerror or exc}") from None


def _open_capture(target, api: int, params: list[int], options: Optional[str]):
    if options is None:
        return cv2.VideoCapture(target, api, params)
    with _env_lock:
        old = os.environ.get(_FFMPEG_OPTIONS)
        os.environ[_FFMPEG_OPTIONS] = options
        try:
            return cv2.VideoCapture(target, api, params)
        finally:
            if old is None:
                os.environ.pop(_FFMPEG_OPTIONS, None)
            else:
                os.environ[_FFMPEG_OPTIONS] = old


def open_cpu(cfg: StreamConfig) -> CvSource:
    """Open `cfg.source` for CPU decode. Raises SourceError with the reason."""
    source = cfg.source
    kind = source_kind(source)
    timeout_ms = int(cfg.stall_timeout_s * 1000)
    timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
    if kind == SOURCE_FILE:
        path = Path(source)
        if not path.exists():
            raise SourceError(f"file not found: {source}")
        if not path.is_file():
            raise SourceError(f"not a file: {source}")
        if not os.access(path, os.R_OK):
            raise SourceError(f"file not readable (permissions): {source}")
        cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, timeouts)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{source}: not a video OpenCV/FFmpeg can decode (unknown container or codec)")
        return CvSource(cap, source, is_file=True)
    if kind == SOURCE_URL:
        scheme = source.split("://", 1)[0].lower()
        if scheme not in URL_SCHEMES:
            raise SourceError(f"{redact(source)}: unsupported URL scheme {scheme!r} (expected one of {', '.join(URL_SCHEMES)})")
        _probe_tcp(source, cfg.stall_timeout_s)
        options = f"rtsp_transport;{cfg.rtsp_transport}" if scheme in ("rtsp", "rtsps") else None
        started = time.monotonic()
        cap = _open_capture(source, cv2.CAP_FFMPEG, timeouts, options)
        if not cap.isOpened():
            cap.release()
            waited = time.monotonic() - started
            if waited >= cfg.stall_timeout_s * 0.9:
                raise SourceError(f"{redact(source)}: the server accepted the connection but sent no video "
                                  f"within {cfg.stall_timeout_s:g} s")
            raise SourceError(f"{redact(source)}: the server refused the stream or sent no decodable video")
        return CvSource(cap, redact(source), is_file=False)
    if kind == SOURCE_DEVICE:
        index = int(source) if source.isdigit() else source
        if isinstance(index, str) and not Path(source).exists():
            raise SourceError(f"no such device: {source}")
        cap = cv2.VideoCapture(index, cv2.CAP_V4L2)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{source}: cannot open the V4L2 device (busy, no permission, or not a capture device)")
        if cfg.fourcc:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*cfg.fourcc))
        if cfg.width and cfg.height:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
        if cfg.fps:
            cap.set(cv2.CAP_PROP_FPS, cfg.fps)
        return CvSource(cap, source, is_file=False)
    if not gstreamer_available():
        raise SourceError("this OpenCV build has no GStreamer (cv2.getBuildInformation()), so a pipeline "
                          "source cannot open; install an OpenCV built with GStreamer (JetPack's python3-opencv)")
    pipeline = source if "appsink" in source else source + " ! appsink drop=true max-buffers=1"
    cap = cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"the GStreamer pipeline did not start: {source}")
    return CvSource(cap, source, is_file=False)
