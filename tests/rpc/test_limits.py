"""[limits]: each bound answers its own status with a message naming the key, and only the client
over it is refused."""
from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from edgeinfer_proto.edgeinfer.v1 import inference_pb2 as pb
from edgeinfer_proto.edgeinfer.v1 import inference_pb2_grpc as pb_grpc
from edgeinfer_proto.tensors import to_tensor


def _config(trivial_onnx, tmp_path, **limits):
    from edgeinfer.config import parse_config

    return parse_config({
        "server": {"workers": 2},
        "cache": {"dir": str(tmp_path)},
        "limits": limits,
        "models": [{"name": "trivial", "onnx": str(trivial_onnx), "backends": ["onnxruntime"],
                    "postprocess": {"task": "raw"},
                    "onnxruntime": {"providers": ["CPUExecutionProvider"], "intra_op_threads": 1}}],
    })


def _request(rows: int = 1) -> pb.InferRequest:
    r = pb.InferRequest(model="trivial")
    r.tensors.tensors.append(to_tensor("x", np.zeros((rows, 64), np.float32)))
    return r


def _code(stub, request) -> tuple[grpc.StatusCode, str]:
    try:
        stub.Infer(request, timeout=30)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


@pytest.fixture(scope="module")
def limited(start_daemon, trivial_onnx, tmp_path_factory):
    d = start_daemon(_config(trivial_onnx, tmp_path_factory.mktemp("limits"), max_tensor_bytes=64 * 4 * 8,
                             max_batch_rows=4, max_streams_per_connection=2, max_deadline_s=5.0))
    with grpc.insecure_channel(d.address) as ch:
        yield d, ch


def test_tensor_bytes_and_rows(limited):
    _, ch = limited
    stub = pb_grpc.InferenceStub(ch)
    assert _code(stub, _request(4))[0] == grpc.StatusCode.OK
    code, details = _code(stub, _request(5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_batch_rows" in details, details
    code, details = _code(stub, _request(9))  # 2,304 bytes, over the 2,048 limit
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_tensor_bytes" in details, details


def test_streams_per_connection(limited):
    d, ch = limited
    stub = pb_grpc.InferenceStub(ch)
    gates = [threading.Event() for _ in range(2)]

    def frames(gate):
        yield _request()
        gate.wait(20)

    open_calls = [stub.InferStream(frames(g), timeout=30) for g in gates]
    for call in open_calls:  # both streams are open and answering
        assert next(call).WhichOneof("result") == "response"
    with pytest.raises(grpc.RpcError) as info:
        list(stub.InferStream(iter([_request()]), timeout=30))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_streams_per_connection" in info.value.details()
    # Another connection is not affected.
    with grpc.insecure_channel(d.address, options=[("grpc.use_local_subchannel_pool", 1)]) as other:
        answers = list(pb_grpc.InferenceStub(other).InferStream(iter([_request()]), timeout=30))
        assert answers[0].WhichOneof("result") == "response"
    for g in gates:
        g.set()
    for call in open_calls:
        list(call)
    # The slots are given back when streams end.
    deadline = time.monotonic() + 5
    while True:
        try:
            assert list(stub.InferStream(iter([_request()]), timeout=30))[0].WhichOneof("result") == "response"
            break
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_rate_per_client(start_daemon, trivial_onnx, tmp_path):
    d = start_daemon(_config(trivial_onnx, tmp_path, rate_per_client=2.0, rate_burst=3))
    with grpc.insecure_channel(d.address) as ch:
        stub = pb_grpc.InferenceStub(ch)
        codes = [_code(stub, _request()) for _ in range(6)]
    assert [c for c, _ in codes[:3]] == [grpc.StatusCode.OK] * 3
    refused = [(c, m) for c, m in codes[3:] if c != grpc.StatusCode.OK]
    assert refused and all(c == grpc.StatusCode.RESOURCE_EXHAUSTED and "rate_per_client" in m for c, m in refused)
    time.sleep(1.0)  # the bucket refills at 2/s
    with grpc.insecure_channel(d.address) as ch:
        assert _code(pb_grpc.InferenceStub(ch), _request())[0] == grpc.StatusCode.OK


def test_deadline_cap(start_daemon, trivial_onnx, tmp_path):
    """A request that waits past [limits] max_deadline_s is dropped before it runs, whatever the client's deadline."""
    config = _config(trivial_onnx, tmp_path, max_deadline_s=0.05)
    config.server.workers = 1
    config.server.inline_max_us = 0  # every request takes the worker
    d = start_daemon(config)
    block = threading.Event()
    d.daemon.pipeline.executor.submit(block.wait, 10)  # hold the one worker for 0.5 s, 10x the cap
    threading.Timer(0.5, block.set).start()
    with grpc.insecure_channel(d.address) as ch:
        start = time.monotonic()
        code, details = _code(pb_grpc.InferenceStub(ch), _request())  # the client sets no deadline
    assert time.monotonic() - start < 5
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED, (code, details)


def test_limits_config_is_validated():
    from edgeinfer.config import parse_config
    from edgeinfer.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\[limits\] max_batch_rows"):
        parse_config({"limits": {"max_batch_rows": 0}})
    with pytest.raises(ConfigError, match=r"\[limits\] rate_per_clients: unknown key"):
        parse_config({"limits": {"rate_per_clients": 1}})


def _kserve_code(ch, rows: int) -> tuple[grpc.StatusCode, str]:
    from edgeinfer_proto.inference import grpc_service_pb2 as kpb
    from edgeinfer_proto.inference import grpc_service_pb2_grpc as kpb_grpc

    req = kpb.ModelInferRequest(model_name="trivial")
    req.inputs.add(name="x", datatype="FP32", shape=[rows, 64])
    req.raw_input_contents.append(np.zeros((rows, 64), np.float32).tobytes())
    try:
        kpb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=30)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def test_the_kserve_protocol_is_held_to_the_same_limits(limited, start_daemon, trivial_onnx, tmp_path):
    _, ch = limited
    assert _kserve_code(ch, 4)[0] == grpc.StatusCode.OK
    code, details = _kserve_code(ch, 5)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_batch_rows" in details, details
    d = start_daemon(_config(trivial_onnx, tmp_path, max_tensor_bytes=64 * 4 * 2, rate_per_client=2.0, rate_burst=3))
    with grpc.insecure_channel(d.address) as ch2:
        code, details = _kserve_code(ch2, 3)  # 768 bytes, over the 512 limit
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_tensor_bytes" in details, details
        # one rate per client whichever protocol carries its requests: 1 above + 1 edgeinfer.v1 + 4 more
        codes = [_code(pb_grpc.InferenceStub(ch2), _request())[0]] + [_kserve_code(ch2, 1)[0] for _ in range(4)]
    assert codes[:2] == [grpc.StatusCode.OK] * 2
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes[2:], codes
