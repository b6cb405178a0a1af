"""Stream fixtures: the face video, a long looped copy of it, a real RTSP server on loopback."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from testkit.streams_kit import RtspServer, rtsp_server_missing


@pytest.fixture(scope="session")
def face_video(media) -> Path:
    """120 frames of QCIF video with a face in every frame."""
    return media / "carphone_pristine.mp4"


@pytest.fixture(scope="session")
def long_face_video(face_video, tmp_path_factory) -> Path:
    """The face video 10 times over (40 s at 30 fps), MPEG-4 part 2 in MP4 (OpenCV's own writer),
    so an RTSP client sees no end of stream during a test."""
    import cv2

    out = tmp_path_factory.mktemp("video") / "faces-long.mp4"
    cap = cv2.VideoCapture(str(face_video))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), 30, (w, h))
    for _ in range(10):
        for frame in frames:
            writer.write(frame)
    writer.release()
    return out


@pytest.fixture
def rtsp_server(long_face_video):
    missing = rtsp_server_missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} -- .ci/run installs it", pytrace=False)
        pytest.skip(missing)
    server = RtspServer(long_face_video).start()
    yield server
    server.kill()


