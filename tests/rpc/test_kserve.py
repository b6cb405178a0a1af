"""inference.GRPCInferenceService through edgeinfer's own generated stubs (so also on the
grpcio 1.62 / protobuf 4.25 floor, where tritonclient does not import): the wire details and
the errors a malformed request gets."""
from __future__ import annotations

import struct

import grpc
import numpy as np
import pytest
from edgeinfer_proto.inference import grpc_service_pb2 as pb
from edgeinfer_proto.inference import grpc_service_pb2_grpc as pb_grpc

from edgeinfer_client import Client


@pytest.fixture(scope="module")
def trivial_daemon(start_daemon, trivial_onnx, tmp_path_factory):
    from edgeinfer.config import parse_config

    from edgeinfer_bench.trivial import trivial_model_config

    cfg = parse_config({"server": {"workers": 2}, "cache": {"dir": str(tmp_path_factory.mktemp("c"))},
                        "models": []}, source="test_kserve")
    cfg.models.append(trivial_model_config(trivial_onnx))
    return start_daemon(cfg)


@pytest.fixture(scope="module")
def stub(trivial_daemon):
    with grpc.insecure_channel(trivial_daemon.address) as ch:
        yield pb_grpc.GRPCInferenceServiceStub(ch)


def _request(x: np.ndarray, raw: bool = True, datatype: str = "FP32", **fields) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="trivial", **fields)
    t = req.inputs.add(name="x", datatype=datatype, shape=list(x.shape))
    if raw:
        req.raw_input_contents.append(x.tobytes())
    else:
        t.contents.fp32_contents.extend(x.reshape(-1).tolist())
    return req


def _y(resp: pb.ModelInferResponse) -> np.ndarray:
    (out,) = resp.outputs
    assert out.name == "y" and out.datatype == "FP32"
    return np.frombuffer(resp.raw_output_contents[0], "<f4").reshape(tuple(out.shape))


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_raw_and_typed_tensors_answer_as_edgeinfer_v1(stub, trivial_daemon):
    x = np.arange(3 * 64, dtype=np.float32).reshape(3, 64)
    with Client(trivial_daemon.address, timeout=10) as c:
        want = c.infer("trivial", tensors={"x": x}).outputs["y"]
    np.testing.assert_array_equal(_y(stub.ModelInfer(_request(x, id="r1"))), want)
    np.testing.assert_array_equal(_y(stub.ModelInfer(_request(x, raw=False))), want)
    resp = stub.ModelInfer(_request(x, id="r1"))
    assert resp.id == "r1" and resp.model_name == "trivial" and resp.model_version == "1"


def test_malformed_requests_are_invalid_argument_with_a_message_about_them(stub):
    x = np.zeros((1, 64), np.float32)
    short = _request(x)
    short.raw_input_contents[0] = b"\0" * 10
    assert _code(lambda: stub.ModelInfer(short)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'x': shape [1, 64] of FP32 needs 256 bytes, raw_input_contents[0] holds 10")
    code, msg = _code(lambda: stub.ModelInfer(_request(x, datatype="FP8")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'FP8'" in msg
    code, msg = _code(lambda: stub.ModelInfer(_request(x, datatype="INT32")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'x'" in msg  # the model takes float32
    fp16 = _request(x.astype(np.float16), raw=False, datatype="FP16")
    code, msg = _code(lambda: stub.ModelInfer(fp16))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "raw_input_contents" in msg
    two = _request(x)
    two.inputs.add(name="z", datatype="FP32", shape=[1])
    code, msg = _code(lambda: stub.ModelInfer(two))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "all inputs or none" in msg
    code, msg = _code(lambda: stub.ModelInfer(pb.ModelInferRequest(model_name="trivial")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no inputs" in msg
    bad_param = _request(x)
    bad_param.parameters["top_k"].string_param = "five"
    code, msg = _code(lambda: stub.ModelInfer(bad_param))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'top_k'" in msg
    # An image to a model that takes tensors only.
    img = pb.ModelInferRequest(model_name="trivial")
    img.inputs.add(name="image", datatype="BYTES", shape=[1])
    img.raw_input_contents.append(struct.pack("<I", 3) + b"abc")
    code, msg = _code(lambda: stub.ModelInfer(img))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "takes tensors, not encoded images" in msg


def test_truncated_bytes_contents_are_refused():
    from edgeinfer.errors import InvalidInput
    from edgeinfer.rpc.kserve_converters import deserialize_bytes, serialize_bytes

    items = np.array([b"one", b"", b"three"], dtype=object)
    raw = serialize_bytes(items)
    assert raw == struct.pack("<I", 3) + b"one" + struct.pack("<I", 0) + struct.pack("<I", 5) + b"three"
    assert list(deserialize_bytes("s", raw, 3)) == [b"one", b"", b"three"]
    with pytest.raises(InvalidInput, match="element 2 says 5 bytes, only 4 remain"):
        deserialize_bytes("s", raw[:-1], 3)
    with pytest.raises(InvalidInput, match="needs 2 BYTES elements, the raw contents hold 3"):
        deserialize_bytes("s", raw, 2)


def test_unknown_and_unloaded_models(stub, trivial_daemon):
    x = np.zeros((1, 64), np.float32)
    req = _request(x)
    req.model_name = "nope"
    code, msg = _code(lambda: stub.ModelInfer(req))
    assert code == grpc.StatusCode.NOT_FOUND and msg.startswith("Request for unknown model: 'nope' is not found")
    assert stub.ModelReady(pb.ModelReadyRequest(name="nope")).ready is False
    assert stub.ModelReady(pb.ModelReadyRequest(name="trivial", version="7")).ready is False
    code, _ = _code(lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="trivial", version="7")))
    assert code == grpc.StatusCode.NOT_FOUND
    stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="trivial"))
    try:
        code, msg = _code(lambda: stub.ModelInfer(_request(x)))
        assert code == grpc.StatusCode.UNAVAILABLE and "unloaded" in msg
        # One data plane: edgeinfer.v1 stops serving it too.
        with Client(trivial_daemon.address, timeout=10) as c:
            with pytest.raises(Exception) as info:
                c.infer("trivial", tensors={"x": x})
            assert info.value.code == "UNAVAILABLE"
            assert c.health("trivial") == "NOT_SERVING"
    finally:
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="trivial"))
    assert stub.ModelReady(pb.ModelReadyRequest(name="trivial")).ready
    np.testing.assert_array_equal(_y(stub.ModelInfer(_request(x))), x + 1)
    code, _ = _code(lambda: stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="nope")))
    assert code == grpc.StatusCode.NOT_FOUND


def test_shared_memory_and_other_triton_only_methods_are_unimplemented(trivial_daemon):
    with grpc.insecure_channel(trivial_daemon.address) as ch:
        call = ch.unary_unary("/inference.GRPCInferenceService/SystemSharedMemoryStatus",
                              request_serializer=lambda b: b, response_deserializer=lambda b: b)
        code, _ = _code(lambda: call(b"", timeout=5))
    assert code == grpc.StatusCode.UNIMPLEMENTED


def test_kserve_requests_count_in_the_shared_metrics(stub, trivial_daemon):
    registry = trivial_daemon.daemon.metrics.registry

    def ok() -> float:
        return registry.get_sample_value("edgeinfer_requests_total", {"model": "trivial", "code": "OK"}) or 0.0

    before = ok()
    for _ in range(3):
        stub.ModelInfer(_request(np.zeros((1, 64), np.float32)))
    assert ok() == before + 3
