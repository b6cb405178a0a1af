"""Inputs an attacker would send, each against a real daemon: the right status, a message about the
request (no library internals), bounded memory, and the daemon still answering afterwards."""
from __future__ import annotations

import logging
import math
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import grpc
import numpy as np
import pytest

from edgeinfer_proto.edgeinfer.v1 import inference_pb2 as pb
from edgeinfer_proto.edgeinfer.v1 import inference_pb2_grpc as pb_grpc
from edgeinfer_proto.tensors import to_tensor
from testkit.memory import rss_mb, settled_rss_mb

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def png(width: int, height: int, channels: int = 3, depth: int = 8) -> bytes:
    """A real, decodable PNG of width x height (zeros), compressed: a few hundred bytes."""
    color = {1: 0, 3: 2, 4: 6}[channels]
    row = b"\x00" + b"\x00" * (width * channels * depth // 8)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(row * height, 9))
            + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def channel(daemon):
    with grpc.insecure_channel(daemon.address, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return pb_grpc.InferenceStub(channel)


def _status(stub, request) -> tuple[grpc.StatusCode, str]:
    try:
        stub.Infer(request, timeout=60)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def _no_internals(details: str) -> None:
    for leak in ("onnxruntime_src", ".cc:", ".h:", "Traceback", "numpy", "ValueError"):
        assert leak not in details, details


def test_extreme_aspect_png_keeps_memory_bounded(stub, classifier_onnx, daemon):
    """A 10000x1 PNG (a few hundred bytes) once made center-crop allocate ~2 GB; 40000x1 ~8 GB."""
    data_10k, data_40k = png(10000, 1), png(40000, 1)
    assert len(data_10k) < 200
    # Warm both models' paths first, so the arena and buffers normal requests use are counted in `before`.
    assert _status(stub, pb.InferRequest(model="imagenet", image=png(600, 400)))[0] == grpc.StatusCode.OK
    before = rss_mb()
    peak = before
    for data in (data_10k, data_40k, data_10k, data_40k):
        for model in ("imagenet", "faces"):
            code, details = _status(stub, pb.InferRequest(model=model, image=data))
            assert code in (grpc.StatusCode.OK, INVALID), (model, code, details)
            peak = max(peak, rss_mb())
    after = rss_mb()
    assert after - before < 200, f"RSS {before:.0f} -> {after:.0f} MB (peak {peak:.0f})"
    assert peak - before < 200, f"RSS peak {peak:.0f} MB against {before:.0f} before"


def test_corrupt_protobuf_is_invalid_argument_counted_and_logged_once(channel, daemon, caplog):
    raw = channel.unary_unary("/edgeinfer.v1.Inference/Infer")  # no serializer: the bytes go as they are
    metrics = daemon.daemon.metrics

    def malformed_count() -> float:
        value = metrics.registry.get_sample_value(
            "edgeinfer_requests_total", {"model": "(unknown)", "code": "INVALID_ARGUMENT"})
        return value or 0.0

    start = malformed_count()
    caplog.set_level(logging.WARNING, logger="edgeinfer.rpc.servicer")
    for _ in range(20):
        with pytest.raises(grpc.RpcError) as info:
            raw(b"\xff", timeout=10)
        assert info.value.code() == INVALID, info.value.details()
        assert "not a valid edgeinfer.v1.InferRequest" in info.value.details()
    assert malformed_count() - start == 20
    lines = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(lines) <= 1, [r.getMessage() for r in lines]
    assert all(r.exc_info is None for r in lines)
    # Streams: a malformed frame is that frame's error; the stream goes on.
    stream = channel.stream_stream("/edgeinfer.v1.Inference/InferStream",
                                   response_deserializer=pb.StreamResponse.FromString)
    good = pb.InferRequest(model="faces", image=png(64, 64)).SerializeToString()
    answers = list(stream(iter([b"\xff", good]), timeout=30))
    assert answers[0].error.code == "INVALID_ARGUMENT" and answers[1].WhichOneof("result") == "response"


@pytest.mark.parametrize("model,shape", [
    ("imagenet", [0, 3, 224, 224]),
    ("faces", [1, 3, 33, 33]),
    ("imagenet", [2 ** 62, 0, 224, 224]),
    ("faces", [0, 3, 32, 32]),
])
def test_zero_or_mismatched_tensor_shapes(stub, classifier_onnx, model, shape):
    count = math.prod(shape)
    tensor = pb.Tensor(name="input.1" if model == "faces" else "input", dtype=pb.DATA_TYPE_FLOAT32, shape=shape,
                       data=b"\x00" * (4 * count))
    request = pb.InferRequest(model=model)
    request.tensors.tensors.append(tensor)
    code, details = _status(stub, request)
    assert code == INVALID, (code, details)
    _no_internals(details)
    assert str(shape) in details or "zero dimension" in details, details


def test_message_and_image_byte_limits(stub):
    """server.max_message_bytes (32 MiB in the dev config): RESOURCE_EXHAUSTED from gRPC itself;
    server.max_image_bytes (20 MiB): INVALID_ARGUMENT before any decoding."""
    code, details = _status(stub, pb.InferRequest(model="faces", image=b"\x89PNG" + bytes(33 << 20)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
    code, details = _status(stub, pb.InferRequest(model="faces", image=png(64, 64) + bytes(21 << 20)))
    assert code == INVALID and "over the limit of 20971520" in details, details


def test_large_tensor_request_gives_its_memory_back(stub, classifier_onnx):
    """A batch-40 EfficientNet request grew ONNX Runtime's CPU arena by ~340 MB, kept for the life of
    the process; over [limits] arena_shrink_bytes the run gives it back."""
    batch = pb.InferRequest(model="imagenet")
    batch.tensors.tensors.append(to_tensor("input", np.zeros((40, 3, 224, 224), np.float32)))
    one = pb.InferRequest(model="imagenet")
    one.tensors.tensors.append(to_tensor("input", np.zeros((1, 3, 224, 224), np.float32)))
    assert _status(stub, one)[0] == grpc.StatusCode.OK
    before = settled_rss_mb()
    assert _status(stub, batch)[0] == grpc.StatusCode.OK
    after = settled_rss_mb()
    assert after - before < 150, f"RSS {before:.0f} -> {after:.0f} MB after a batch-40 request"


def test_jpeg_cut_short_with_end_marker(stub, media):
    import cv2

    data = cv2.imencode(".jpg", cv2.imread(str(media / "astronaut.png")))[1].tobytes()
    code, details = _status(stub, pb.InferRequest(model="faces", image=data[: len(data) // 2] + b"\xff\xd9"))
    assert code == INVALID and "truncated" in details, details
    # The whole image, and a legitimately grey one, still pass.
    assert _status(stub, pb.InferRequest(model="faces", image=data))[0] == grpc.StatusCode.OK
    grey = cv2.imencode(".jpg", np.full((96, 128, 3), 128, np.uint8))[1].tobytes()
    assert _status(stub, pb.InferRequest(model="faces", image=grey))[0] == grpc.StatusCode.OK


def test_side_over_opencvs_limit(stub):
    """Found by the fuzzer: a BMP declaring 16777216x1 (within max_image_pixels) tripped an OpenCV
    assertion (INTERNAL, with OpenCV's source path)."""
    import cv2

    bmp = bytearray(cv2.imencode(".bmp", np.zeros((1, 256, 3), np.uint8))[1].tobytes())
    bmp[18:22] = struct.pack("<i", 1 << 24)
    code, details = _status(stub, pb.InferRequest(model="faces", image=bytes(bmp)))
    assert code == INVALID and "16777216x1" in details, details
    _no_internals(details)


@pytest.mark.parametrize("field,value", [
    ("score_threshold", float("nan")), ("score_threshold", -0.5), ("score_threshold", 4294967295.0),
    ("nms_iou_threshold", float("nan")), ("nms_iou_threshold", -1.0), ("top_k", 4294967295),
])
def test_option_values(stub, field, value):
    request = pb.InferRequest(model="faces", image=png(64, 64))
    setattr(request.options, field, value)
    code, details = _status(stub, request)
    assert code == INVALID and f"options.{field}" in details, (code, details)


def test_second_daemon_on_a_taken_port(tmp_path, daemon):
    """One line, "cannot listen on ...", exit 1: no traceback."""
    root = Path(__file__).resolve().parents[2]
    config = tmp_path / "taken.toml"
    config.write_text(f'[server]\nlisten = "{daemon.address}"\n[metrics]\nenabled = false\n')
    env = {"PYTHONPATH": f"{root / 'daemon'}:{root / 'clients'}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "edgeinfer.cli", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr, proc.stderr
    assert f"cannot listen on {daemon.address}" in proc.stderr, proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1, proc.stderr


def test_daemon_still_serves(client, media):
    assert client.infer("faces", media / "astronaut.png").detections


@pytest.mark.parametrize("method,streaming", [
    ("/inference.GRPCInferenceService/ModelInfer", False),
    ("/inference.GRPCInferenceService/ModelStreamInfer", True),
    ("/inference.GRPCInferenceService/ModelMetadata", False),
    ("/edgeinfer.v1.Admin/Reload", False),
    ("/edgeinfer.v1.Streams/ListStreams", False),
    ("/edgeinfer.v1.Streams/WatchStream", True),
    ("/grpc.health.v1.Health/Check", False),
    ("/grpc.health.v1.Health/Watch", True),
])
def test_corrupt_protobuf_to_any_service_is_invalid_argument(channel, method, streaming):
    """Every service's requests parse the way Inference's do (rpc/methods.py guarded): bytes that
    are not the message answer INVALID_ARGUMENT naming it, not UNKNOWN with a logged traceback."""
    with pytest.raises(grpc.RpcError) as info:
        if method.endswith(("ModelStreamInfer",)):
            list(channel.stream_stream(method)(iter([b"\xff"]), timeout=10))
        elif streaming:
            list(channel.unary_stream(method)(b"\xff", timeout=10))
        else:
            channel.unary_unary(method)(b"\xff", timeout=10)
    assert info.value.code() == INVALID, (method, info.value.code(), info.value.details())
    assert "is not a valid" in info.value.details()
