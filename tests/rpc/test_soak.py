"""Soak: sustained mixed load on a real daemon (unary image and tensor requests, InferStream, clients
that drop a stream midway, connections opened and closed, config reloads that swap a model every
2 s), sampling the process's RSS, threads and open file descriptors. After a warm-up, none may keep
growing.

CI runs EDGEINFER_SOAK_SECONDS (default 20); a long run sets it higher and EDGEINFER_SOAK_REPORT to a
file that gets the samples' summary (docs/security.md has the last long run's figures).
"""
from __future__ import annotations

import json
import os
import threading
import time

import cv2
import grpc
import numpy as np
import pytest

from edgeinfer_proto.edgeinfer.v1 import inference_pb2 as pb
from edgeinfer_proto.edgeinfer.v1 import inference_pb2_grpc as pb_grpc
from edgeinfer_proto.tensors import to_tensor
from testkit.memory import open_fds, rss_mb, threads

SECONDS = float(os.environ.get("EDGEINFER_SOAK_SECONDS", "20"))
REPORT = os.environ.get("EDGEINFER_SOAK_REPORT")

pytestmark = pytest.mark.slow


def _write_config(path, trivial_onnx, centerface_onnx, version: int) -> None:
    cpu = '[models.onnxruntime]\nproviders = ["CPUExecutionProvider"]\nintra_op_threads = 1\n'
    path.write_text(
        f'[server]\nworkers = 4\n[metrics]\nenabled = false\n[cache]\ndir = "{path.parent / "cache"}"\n'
        f'[[models]]\nname = "trivial"\nversion = "{version}"\nonnx = "{trivial_onnx}"\nbackends = ["onnxruntime"]\n'
        f'[models.postprocess]\ntask = "raw"\n{cpu}'
        f'[[models]]\nname = "faces"\nonnx = "{centerface_onnx}"\nbackends = ["onnxruntime"]\n'
        f'[models.input]\nresize = "letterbox"\nsize = [320, 256]\npad_value = 0\n'
        f'[models.postprocess]\ntask = "centerface"\nscore_threshold = 0.5\n{cpu}')


def _as_test_daemon(cfg):
    cfg.server.listen, cfg.metrics.enabled = "127.0.0.1:0", False
    return cfg


def test_soak(start_daemon, trivial_onnx, centerface_onnx, media, tmp_path):
    import asyncio

    from edgeinfer.config import load_config

    path = tmp_path / "edgeinfer.toml"
    _write_config(path, trivial_onnx, centerface_onnx, 1)
    d = start_daemon(load_config(path), config_path=str(path), config_overrides=_as_test_daemon)
    photo = cv2.imencode(".jpg", cv2.resize(cv2.imread(str(media / "astronaut.png")), (320, 320)))[1].tobytes()
    image_req = pb.InferRequest(model="faces", image=photo)
    tensor_req = pb.InferRequest(model="trivial")
    tensor_req.tensors.tensors.append(to_tensor("x", np.ones((1, 64), np.float32)))
    stop = threading.Event()
    counts = {"unary": 0, "stream_frames": 0, "dropped_streams": 0, "connections": 0, "reloads": 0,
              "unavailable": 0}
    errors: list[str] = []
    lock = threading.Lock()

    def count(key, n=1):
        with lock:
            counts[key] += n

    def unary():
        with grpc.insecure_channel(d.address) as ch:
            stub = pb_grpc.InferenceStub(ch)
            while not stop.is_set():
                for req in (tensor_req, tensor_req, image_req):
                    try:
                        stub.Infer(req, timeout=30)
                        count("unary")
                    except grpc.RpcError as exc:  # a model swapped by a reload may answer UNAVAILABLE
                        if exc.code() != grpc.StatusCode.UNAVAILABLE:
                            raise
                        count("unavailable")

    def reloads():
        # The trivial model's version flips on each reload: a new copy loads, the old one drains.
        version = 1
        while not stop.wait(2.0):
            version = 3 - version
            _write_config(path, trivial_onnx, centerface_onnx, version)
            outcome = asyncio.run_coroutine_threadsafe(d.daemon.reload(), d.loop).result(60)
            assert outcome.accepted, outcome.summary()
            count("reloads")

    def streams():
        with grpc.insecure_channel(d.address) as ch:
            stub = pb_grpc.InferenceStub(ch)
            while not stop.is_set():
                answers = list(stub.InferStream(iter([tensor_req] * 20 + [image_req] * 2), timeout=30))
                errors_seen = [a.error.code for a in answers if a.WhichOneof("result") == "error"]
                assert set(errors_seen) <= {"UNAVAILABLE"}, errors_seen
                count("stream_frames", len(answers) - len(errors_seen))
                count("unavailable", len(errors_seen))

    def droppers():
        while not stop.is_set():
            with grpc.insecure_channel(d.address) as ch:  # a new connection each time
                count("connections")
                call = pb_grpc.InferenceStub(ch).InferStream(iter([image_req] * 50), timeout=30)
                next(call)
                call.cancel()  # the client goes away with frames in flight
                count("dropped_streams")

    def guard(fn):
        def run():
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(f"{fn.__name__}: {exc!r}")
                stop.set()
        return run

    workers = [threading.Thread(target=guard(f), daemon=True) for f in (unary, unary, streams, droppers, reloads)]
    for w in workers:
        w.start()
    samples = []
    start = time.monotonic()
    while time.monotonic() - start < SECONDS and not stop.is_set():
        time.sleep(min(1.0, SECONDS / 20))
        samples.append((time.monotonic() - start, rss_mb(), threads(), open_fds()))
    stop.set()
    for w in workers:
        w.join(30)
    assert not errors, errors
    warm = [s for s in samples if s[0] >= SECONDS * 0.3]
    first, last = warm[0], warm[-1]
    peak = max(s[1] for s in warm)
    summary = {"seconds": SECONDS, **counts,
               "rss_mb": {"after_warmup": round(first[1]), "end": round(last[1]), "peak": round(peak)},
               "threads": {"after_warmup": first[2], "end": last[2], "max": max(s[2] for s in warm)},
               "fds": {"after_warmup": first[3], "end": last[3], "max": max(s[3] for s in warm)}}
    if REPORT:
        with open(REPORT, "w") as f:
            json.dump(summary, f, indent=2)
    assert counts["unary"] > 0 and counts["stream_frames"] > 0 and counts["dropped_streams"] > 0, summary
    assert counts["reloads"] > 0, summary
    assert last[1] - first[1] < 60, summary
    assert last[2] - first[2] <= 4, summary
    assert last[3] - first[3] <= 16, summary
    with grpc.insecure_channel(d.address) as ch:  # the daemon still answers
        assert pb_grpc.InferenceStub(ch).Infer(tensor_req, timeout=10).outputs
