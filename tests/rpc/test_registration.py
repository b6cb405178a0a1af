"""Infer, called once per request, is registered with gRPC's core where grpcio can (>= 1.63); every
method of every service has a generic handler, which alone serves the rest (health, reflection,
ListModels, GetModel, InferStream: rpc/methods.py says why) and, on grpcio 1.62, our floor,
every method alike."""
from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from edgeinfer_client import Client, ClientError
from edgeinfer_client import build_request
from edgeinfer_proto.edgeinfer.v1 import inference_pb2_grpc as pb_grpc
from edgeinfer_client.types import stream_item_from_proto


def _config(trivial_onnx, tmp_path):
    from edgeinfer.config import parse_config

    return parse_config({
        "server": {"workers": 1},
        "cache": {"dir": str(tmp_path)},
        "models": [{"name": "trivial", "onnx": str(trivial_onnx), "backends": ["onnxruntime"],
                    "postprocess": {"task": "raw"}, "onnxruntime": {"intra_op_threads": 1}}],
    }, source="test_registration")


def _record(monkeypatch, name: str) -> list:
    """Record the calls of grpc.aio's Server.`name` (the real method still runs)."""
    from grpc.aio._server import Server

    calls = []
    inner = getattr(Server, name)

    def spy(self, *args):
        calls.append(args)
        return inner(self, *args)
    monkeypatch.setattr(Server, name, spy)
    return calls


def _generic_names(calls: list) -> list[str]:
    return [h.service_name() for (handlers,) in calls for h in handlers if hasattr(h, "service_name")]


def _serves_every_method(address: str) -> None:
    from edgeinfer.rpc.servicer import SERVICE_NAME

    x = np.arange(64, dtype=np.float32).reshape(1, 64)
    with Client(address, timeout=30) as c:
        for _ in range(3):  # the inline path's kept response, refilled: each answer its own
            np.testing.assert_array_equal(c.infer("trivial", tensors={"x": x}).outputs["y"], x + 1)
            x = x * 2
        assert [m.name for m in c.list_models()] == ["trivial"]
        assert c.get_model("trivial").name == "trivial"
        with pytest.raises(ClientError) as info:
            c.get_model("nope")
        assert info.value.code == "NOT_FOUND"
    with grpc.insecure_channel(address) as ch:
        requests = [build_request("trivial", tensors={"x": x * k}, request_id=str(k)) for k in range(3)]
        items = [stream_item_from_proto(r) for r in pb_grpc.InferenceStub(ch).InferStream(iter(requests),
                                                                                          timeout=30)]
        for k, item in enumerate(items):
            assert item.request_id == str(k)
            np.testing.assert_array_equal(item.outputs["y"], x * k + 1)
        # a method the service does not have
        with pytest.raises(grpc.RpcError) as info:
            ch.unary_unary(f"/{SERVICE_NAME}/Nope")(b"", timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # health and reflection, through their generic handlers
        health = health_pb2_grpc.HealthStub(ch)
        assert health.Check(health_pb2.HealthCheckRequest(service="trivial"), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING
        listing = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        names = {s.name for r in listing for s in r.list_services_response.service}
        assert {SERVICE_NAME, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


def test_only_infer_is_registered_with_the_core_where_grpcio_can(start_daemon, trivial_onnx, tmp_path,
                                                                  monkeypatch):
    from grpc.aio._server import Server

    if not hasattr(Server, "add_registered_method_handlers"):
        pytest.skip(f"grpcio {grpc.__version__} cannot register methods (< 1.63)")
    registered = _record(monkeypatch, "add_registered_method_handlers")
    generic = _record(monkeypatch, "add_generic_rpc_handlers")
    d = start_daemon(_config(trivial_onnx, tmp_path))
    # Not health's or reflection's methods either, though their generated code registers them all.
    assert [(service, sorted(handlers)) for service, handlers in registered] == [("edgeinfer.v1.Inference", ["Infer"])]
    assert {"edgeinfer.v1.Inference", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= set(_generic_names(generic))
    _serves_every_method(d.address)


def test_the_generic_handler_alone_serves_every_method(start_daemon, trivial_onnx, tmp_path, monkeypatch):
    """As on grpcio 1.62, where servers cannot register methods: our service is not registered."""
    from grpc.aio._server import Server

    inner = getattr(Server, "add_registered_method_handlers", None)
    if inner is not None:
        def others_only(self, service, handlers):
            if service != "edgeinfer.v1.Inference":
                inner(self, service, handlers)
        monkeypatch.setattr(Server, "add_registered_method_handlers", others_only)
    generic = _record(monkeypatch, "add_generic_rpc_handlers")
    d = start_daemon(_config(trivial_onnx, tmp_path))
    assert "edgeinfer.v1.Inference" in _generic_names(generic)
    _serves_every_method(d.address)


def test_add_service_registers_only_the_named_methods_and_refuses_unknown_names(monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from edgeinfer.rpc.methods import GenericOnly, add_service

    with ThreadPoolExecutor(1) as pool:
        server = grpc.server(pool)
        if not hasattr(server, "add_registered_method_handlers"):
            pytest.skip(f"grpcio {grpc.__version__} cannot register methods (< 1.63)")
        registered, generic = [], []
        monkeypatch.setattr(server, "add_registered_method_handlers", lambda s, h: registered.append((s, sorted(h))))
        monkeypatch.setattr(server, "add_generic_rpc_handlers", lambda h: generic.extend(h))
        handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
        add_service(server, "t.S", {"A": handler, "B": handler}, registered=("A",))
        assert registered == [("t.S", ["A"])] and [h.service_name() for h in generic] == ["t.S"]
        add_service(server, "t.R", {"A": handler})  # nothing named: a generic handler only
        assert registered == [("t.S", ["A"])] and [h.service_name() for h in generic] == ["t.S", "t.R"]
        with pytest.raises(KeyError):
            add_service(server, "t.U", {"A": handler}, registered=("Nope",))
        assert [h.service_name() for h in generic] == ["t.S", "t.R"]  # nothing added for t.U
        # What a generated add_*_to_server does, through GenericOnly: its registration is dropped.
        adapter = GenericOnly(server)
        adapter.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.G", {"A": handler}),))
        adapter.add_registered_method_handlers("t.G", {"A": handler})
        assert registered == [("t.S", ["A"])] and generic[-1].service_name() == "t.G"
