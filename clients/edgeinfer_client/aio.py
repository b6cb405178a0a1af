"""asyncio client: the same calls as `Client`, awaitable."""
from __future__ import annotations

import itertools
from typing import AsyncIterator, Iterable, Mapping, Optional, Union

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ._request import ImageLike, build_request
from edgeinfer_proto.edgeinfer.v1 import admin_pb2, admin_pb2_grpc
from edgeinfer_proto.edgeinfer.v1 import inference_pb2 as pb
from edgeinfer_proto.edgeinfer.v1 import inference_pb2_grpc as pb_grpc
from .balancing import Address, channel_target
from .client import DEFAULT_ADDRESS, channel_options
from .errors import from_rpc_error
from .types import (InferResult, ModelInfo, ReloadResult, StreamError, model_from_proto, reload_from_proto,
                    result_from_proto, stream_item_from_proto)


class AsyncClient:
    """asyncio twin of `Client`. Use `async with AsyncClient(addr) as c: await c.infer(...)`."""

    def __init__(self, address: Address = DEFAULT_ADDRESS, timeout: Optional[float] = None):
        self.address = address
        self.timeout = timeout
        target, balancing = channel_target(address)
        self._channel = grpc.aio.insecure_channel(target, options=channel_options() + balancing)
        self._stub = pb_grpc.InferenceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._admin = admin_pb2_grpc.AdminStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _call(self, fn, request, timeout):
        try:
            return await fn(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def infer(self, model: str, image: Optional[ImageLike] = None, *,
                    tensors: Optional[Mapping[str, np.ndarray]] = None, timeout: Optional[float] = None,
                    **options) -> InferResult:
        req = build_request(model, image, tensors=tensors, **options)
        return result_from_proto(await self._call(self._stub.Infer, req, timeout))

    async def stream(self, model: str, frames: Iterable[ImageLike], *, timeout: Optional[float] = None,
                     **options) -> AsyncIterator[Union[InferResult, StreamError]]:
        counter = itertools.count()
        requests = (build_request(model, f, request_id=str(next(counter)), **options) for f in frames)
        call = self._stub.InferStream(requests, timeout=self.timeout if timeout is None else timeout)
        try:
            async for item in call:
                yield stream_item_from_proto(item)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def list_models(self, timeout: Optional[float] = None) -> list[ModelInfo]:
        resp = await self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        return [model_from_proto(m) for m in resp.models]

    async def get_model(self, name: str, timeout: Optional[float] = None) -> ModelInfo:
        return model_from_proto(await self._call(self._stub.GetModel, pb.GetModelRequest(name=name), timeout))

    async def reload(self, timeout: Optional[float] = None) -> ReloadResult:
        """As `Client.reload`: the daemon re-reads its config file and applies it."""
        return reload_from_proto(await self._call(self._admin.Reload, admin_pb2.ReloadRequest(), timeout))

    async def health(self, service: str = "", timeout: Optional[float] = None) -> str:
        resp = await self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
