"""[[streams]] with [server] processes > 1: each stream is pulled by one process, and whichever
process a client reaches answers for all of them (rpc/stream_peers.py)."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
from testkit.streams_kit import faces_model, wait_for
from testkit.supervisor_kit import Running

from edgeinfer.config import parse_config

TOKEN = "kiosk-token-for-the-streams-test"


def _config(tmp_path, centerface_onnx, face_video, inference):
    from edgeinfer.rpc.auth import hash_token

    model = faces_model(centerface_onnx)
    model["onnxruntime"] = {"intra_op_threads": 1}
    return parse_config({
        "server": {"listen": "127.0.0.1:0", "workers": 2, "processes": 2, "grace_period_s": 1.0,
                   "inference": inference},
        "cache": {"dir": str(tmp_path / "cache")},
        # Role checks on: a relayed call must pass the other process's checks too.
        "auth": {"tokens": [{"name": "kiosk", "sha256": hash_token(TOKEN), "roles": ["infer"]}]},
        "models": [model],
        "streams": [{"name": f"cam{i}", "source": str(face_video), "model": "faces", "fps": 3} for i in range(3)],
    }, source="test_streams_processes")


@pytest.mark.slow
@pytest.mark.parametrize("inference", ["per-process", "shared"])
def test_each_stream_is_pulled_once_and_either_process_answers_for_all(tmp_path, centerface_onnx, face_video,
                                                                       inference):
    """With shared inference the front-ends pull the streams and the inference process runs the model."""
    from edgeinfer_client import Client, ClientError

    r = Running(_config(tmp_path, centerface_onnx, face_video, inference))
    try:
        peers_dir = r.sup._peers_dir
        assert oct(os.stat(peers_dir).st_mode & 0o777) == "0o700"
        # Each process's own socket: a client there reaches that process, and no other, first.
        for index in range(2):
            with Client(f"unix:{peers_dir}/{index}.sock", timeout=30, token=TOKEN) as c:
                assert wait_for(lambda: [s.name for s in c.streams() if s.state == "live" and s.frames_processed]
                                == ["cam0", "cam1", "cam2"], 60), c.streams()
                for name in ("cam0", "cam1", "cam2"):
                    results = list(c.watch(name, count=2, timeout=30))
                    assert [res.stream for res in results] == [name, name]
                    assert results[0].frame < results[1].frame and results[1].detections
                    jpeg = c.snapshot(name, draw_boxes=True)
                    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (144, 176, 3)
                with pytest.raises(ClientError, match=r"no stream named 'nope' \(streams: cam0, cam1, cam2\)"):
                    list(c.watch("nope", count=1, timeout=10))
            # Without the token the process refuses, relay or not.
            with Client(f"unix:{peers_dir}/{index}.sock", timeout=10) as c:
                with pytest.raises(ClientError, match="UNAUTHENTICATED"):
                    c.streams()
        # Through the shared port too, and one process pulls each stream: each name once, each
        # stream's frames counted by one capture.
        with Client(r.listen, timeout=30, token=TOKEN) as c:
            first = {s.name: s.frames_in for s in c.streams()}
            assert sorted(first) == ["cam0", "cam1", "cam2"]
            assert wait_for(lambda: all(s.frames_in > first[s.name] for s in c.streams()), 10)
            later = {s.name: s for s in c.streams()}
            assert all(s.fps_in < 40 for s in later.values()), later  # 30 fps sources, pulled once each
    finally:
        r.stop()
    assert r.rc == 0
    assert not os.path.exists(peers_dir)


def _write_config(path, centerface_onnx, face_video, names):
    streams = "".join(f'\n[[streams]]\nname = "{n}"\nsource = "{face_video}"\nmodel = "faces"\nfps = 3\n'
                      for n in names)
    path.write_text(f"""
[server]
listen = "127.0.0.1:0"
workers = 2
processes = 2
grace_period_s = 1.0

[cache]
dir = "{path.parent / 'cache'}"

[[models]]
name = "faces"
onnx = "{centerface_onnx}"
postprocess = {{ task = "centerface" }}
onnxruntime = {{ intra_op_threads = 1 }}
input = {{ color = "rgb", resize = "letterbox", size = [640, 480], pad_value = 0 }}
""" + streams)


@pytest.mark.slow
def test_a_reload_spreads_the_new_stream_list_over_the_processes(tmp_path, centerface_onnx, face_video):
    from edgeinfer.config import load_config
    from edgeinfer_client import Client

    path = tmp_path / "edgeinfer.toml"
    _write_config(path, centerface_onnx, face_video, ["cam0", "cam1"])
    r = Running(load_config(path), config_path=path)
    try:
        with Client(r.listen, timeout=30) as c:
            assert wait_for(lambda: [s.name for s in c.streams() if s.state == "live"] == ["cam0", "cam1"], 60)
            _write_config(path, centerface_onnx, face_video, ["cam0", "cam1", "cam2", "door"])
            r.sup.request_reload()
            assert wait_for(lambda: [s.name for s in c.streams() if s.state == "live" and s.frames_processed]
                            == ["cam0", "cam1", "cam2", "door"], 60), c.streams()
            assert [res.stream for res in c.watch("door", count=1, timeout=30)] == ["door"]
            _write_config(path, centerface_onnx, face_video, ["door"])
            r.sup.request_reload()
            assert wait_for(lambda: [s.name for s in c.streams()] == ["door"], 60), c.streams()
    finally:
        r.stop()
    assert r.rc == 0
