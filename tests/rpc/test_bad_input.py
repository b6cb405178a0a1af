"""Nothing a client sends crashes the daemon: each bad input gets its status and a clear message."""
from __future__ import annotations

import struct
import zlib

import grpc
import numpy as np
import pytest

from edgeinfer_client import ClientError
from edgeinfer_proto.edgeinfer.v1 import inference_pb2 as pb
from edgeinfer_proto.edgeinfer.v1 import inference_pb2_grpc as pb_grpc


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height, followed by a tiny (wrong) IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def stub(daemon):
    with grpc.insecure_channel(daemon.address) as ch:
        yield pb_grpc.InferenceStub(ch)


def _expect(stub, request, code, *fragments):
    with pytest.raises(grpc.RpcError) as info:
        stub.Infer(request, timeout=30)
    assert info.value.code() == code, info.value.details()
    for f in fragments:
        assert f in info.value.details(), info.value.details()
    return info.value.details()


def test_garbage_bytes(stub):
    _expect(stub, pb.InferRequest(model="faces", image=b"hello, not an image"),
            grpc.StatusCode.INVALID_ARGUMENT, "not a JPEG, PNG, BMP or WebP")


def test_truncated_jpeg(stub, media):
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.imread(str(media / "astronaut.png")))
    data = buf.tobytes()
    _expect(stub, pb.InferRequest(model="faces", image=data[: len(data) // 2]),
            grpc.StatusCode.INVALID_ARGUMENT, "JPEG", "truncated")
    # header alone
    _expect(stub, pb.InferRequest(model="faces", image=data[:40]), grpc.StatusCode.INVALID_ARGUMENT, "JPEG")


def test_png_declaring_100000_by_100000(stub):
    details = _expect(stub, pb.InferRequest(model="faces", image=_png_header(100000, 100000)),
                      grpc.StatusCode.INVALID_ARGUMENT, "100000x100000", "over the limit")
    assert "10000000000 pixels" in details


def test_corrupt_png_body(stub):
    _expect(stub, pb.InferRequest(model="faces", image=_png_header(64, 64)),
            grpc.StatusCode.INVALID_ARGUMENT, "could not be decoded")


def test_unknown_model(stub):
    _expect(stub, pb.InferRequest(model="nope", image=b"x"), grpc.StatusCode.NOT_FOUND, "nope", "faces")


def test_empty_request(stub):
    _expect(stub, pb.InferRequest(), grpc.StatusCode.INVALID_ARGUMENT, "names no model")
    _expect(stub, pb.InferRequest(model="faces"), grpc.StatusCode.INVALID_ARGUMENT, "no input")


def test_wrong_tensor_shape_and_dtype(client, classifier_onnx):
    with pytest.raises(ClientError) as info:
        client.infer("imagenet", tensors={"input": np.zeros((1, 3, 100, 100), np.float32)})
    assert info.value.code == "INVALID_ARGUMENT" and "expected shape [?, 3, 224, 224]" in info.value.message
    with pytest.raises(ClientError) as info:
        client.infer("imagenet", tensors={"input": np.zeros((1, 3, 224, 224), np.float64)})
    assert info.value.code == "INVALID_ARGUMENT" and "expected dtype float32, got float64" in info.value.message
    with pytest.raises(ClientError) as info:
        client.infer("imagenet", tensors={"pixels": np.zeros((1, 3, 224, 224), np.float32)})
    assert "missing input tensor(s) ['input']" in info.value.message


def test_tensor_bytes_that_do_not_fit_the_shape(stub):
    t = pb.Tensor(name="input", dtype=pb.DATA_TYPE_FLOAT32, shape=[1, 3, 224, 224], data=b"\x00" * 12)
    req = pb.InferRequest(model="imagenet")
    req.tensors.tensors.append(t)
    _expect(stub, req, grpc.StatusCode.INVALID_ARGUMENT, "needs 602112 bytes, got 12")
    req.tensors.tensors[0].dtype = pb.DATA_TYPE_UNSPECIFIED
    _expect(stub, req, grpc.StatusCode.INVALID_ARGUMENT, "dtype must be set")
    req.tensors.tensors[0].dtype = pb.DATA_TYPE_FLOAT32
    req.tensors.tensors[0].shape[:] = [-1, 3]
    _expect(stub, req, grpc.StatusCode.INVALID_ARGUMENT, "negative dimension")


def test_raw_image_size_mismatch(stub):
    req = pb.InferRequest(model="faces")
    req.raw_image.height, req.raw_image.width, req.raw_image.format = 10, 10, pb.PIXEL_FORMAT_RGB
    req.raw_image.data = b"\x00" * 299
    _expect(stub, req, grpc.StatusCode.INVALID_ARGUMENT, "needs 300 bytes, got 299")
    req.raw_image.format = pb.PIXEL_FORMAT_UNSPECIFIED
    _expect(stub, req, grpc.StatusCode.INVALID_ARGUMENT, "'format' must be set")


def test_correct_tensors_are_answered(client, classifier_onnx, media):
    """The tensor path is not only errors: a real preprocessed tensor gets real outputs."""
    from edgeinfer.config import InputConfig
    from edgeinfer.model.families.preprocess import Preprocessor

    pre = Preprocessor(InputConfig(resize="center-crop", mean=[127.0] * 3, std=[128.0] * 3))
    tensor, _ = pre(pre.decode((media / "coffee.png").read_bytes()))
    out = client.infer("imagenet", tensors={"input": tensor[None]})
    assert out.classes[0].index == 967


def test_daemon_keeps_serving_after_all_that(client, media):
    assert len(client.infer("faces", media / "astronaut.png").detections) == 1
    assert client.health() == "SERVING"
