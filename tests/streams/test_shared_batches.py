"""Streams of one model share its batches: their frames go through the same serving path."""
from __future__ import annotations

from pathlib import Path

import pytest
from testkit.streams_kit import faces_model

from edgeinfer.config import parse_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_frames_of_several_streams_run_in_one_batch(start_daemon, centerface_onnx, face_video, tmp_path):
    from edgeinfer_client import Client

    model = faces_model(centerface_onnx)
    model["batching"] = {"max_batch": 4}
    cfg = parse_config({
        "cache": {"dir": str(tmp_path / "cache")},
        "models": [model],
        # fps 0: every stream sends a frame whenever its last one is answered, so frames of
        # different streams wait together while a batch runs.
        "streams": [{"name": f"cam{i}", "source": str(face_video), "model": "faces", "fps": 0} for i in range(4)],
    }, base_dir=ROOT)
    d = start_daemon(cfg)
    try:
        with Client(d.address, timeout=30) as client:
            results = list(client.watch("cam0", count=24, timeout=60))
            sizes = [r.result.batch_size for r in results]
            # One stream has one frame in flight: a batch of more than one row holds other streams' frames.
            assert max(sizes) >= 2, sizes
            assert sum(bool(r.detections) for r in results) >= 0.95 * len(results)
            assert all(s.frames_processed > 0 for s in client.streams())
    finally:
        d.stop()


@pytest.mark.slow
def test_a_stream_with_frames_in_flight_fills_batches_alone_and_publishes_in_frame_order(
        start_daemon, centerface_onnx, face_video, tmp_path):
    from edgeinfer_client import Client

    model = faces_model(centerface_onnx)
    # One session call at a time, each several frame intervals long (CenterFace at 1280x960):
    # frames taken while it runs wait together for the next batch.
    model["batching"] = {"max_batch": 4}
    model["onnxruntime"] = {"instances": 1}
    model["input"] = {**model["input"], "size": [1280, 960]}
    cfg = parse_config({
        "cache": {"dir": str(tmp_path / "cache")},
        "models": [model],
        "streams": [{"name": "cam", "source": str(face_video), "model": "faces", "fps": 0, "in_flight": 4}],
    }, base_dir=ROOT)
    d = start_daemon(cfg)
    try:
        with Client(d.address, timeout=30) as client:
            results = list(client.watch("cam", count=24, timeout=60))
            # The only stream: a batch of more than one row holds several of its frames at once.
            assert max(r.result.batch_size for r in results) >= 2, [r.result.batch_size for r in results]
            frames = [r.frame for r in results]
            assert frames == sorted(frames) and len(set(frames)) == len(frames), frames
    finally:
        d.stop()


def test_in_flight_must_be_positive(centerface_onnx):
    from edgeinfer.config import ConfigError

    with pytest.raises(ConfigError, match=r"in_flight"):
        parse_config({"models": [faces_model(centerface_onnx)],
                      "streams": [{"name": "a", "source": "x.mp4", "model": "faces", "in_flight": 0}]},
                     base_dir=ROOT)
