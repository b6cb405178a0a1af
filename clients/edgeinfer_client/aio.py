"""asyncio client: the same calls as `Client`, awaitable."""
from __future__ import annotations

import asyncio
from typing import AsyncIterable, AsyncIterator, Iterable, Mapping, Optional, Union

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ._channel import TlsLike, make_channel, token_metadata
from ._request import ImageLike, build_request
from edgeinfer_proto.edgeinfer.v1 import admin_pb2, admin_pb2_grpc
from edgeinfer_proto.edgeinfer.v1 import inference_pb2 as pb
from edgeinfer_proto.edgeinfer.v1 import inference_pb2_grpc as pb_grpc
from .balancing import Address
from .client import DEFAULT_ADDRESS, _Progress, not_found_health
from .errors import ClientError, from_rpc_error
from .types import (InferResult, ModelInfo, ReloadResult, StreamError, model_from_proto, reload_from_proto,
                    result_from_proto, stream_item_from_proto)


class AsyncClient:
    """asyncio twin of `Client` (same arguments, tls and token included).
    Use `async with AsyncClient(addr) as c: await c.infer(...)`."""

    def __init__(self, address: Address = DEFAULT_ADDRESS, timeout: Optional[float] = None, *,
                 tls: TlsLike = None, token: Optional[str] = None):
        self.address = address
        self.timeout = timeout
        self._metadata = token_metadata(token)
        self._channel = make_channel(address, tls, aio=True)
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
            return await fn(request, timeout=self.timeout if timeout is None else timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def infer(self, model: str, image: Optional[ImageLike] = None, *,
                    tensors: Optional[Mapping[str, np.ndarray]] = None, timeout: Optional[float] = None,
                    **options) -> InferResult:
        req = build_request(model, image, tensors=tensors, **options)
        return result_from_proto(await self._call(self._stub.Infer, req, timeout))

    async def stream(self, model: str, frames: Union[Iterable[ImageLike], AsyncIterable[ImageLike]], *, timeout: Optional[float] = None,
                     request_id: str = "", **options) -> AsyncIterator[Union[InferResult, StreamError]]:
        """As Client.stream: `timeout` is the longest wait for each frame's result, `request_id` a prefix.
        `frames` may be an async iterable (a camera read with awaits); a plain iterable is read on the
        event loop, so it must not block."""
        frame_timeout = self.timeout if timeout is None else timeout
        progress = _Progress()
        make = progress.arequests if hasattr(frames, "__aiter__") else progress.requests
        call = self._stub.InferStream(make(model, frames, request_id, options), metadata=self._metadata)
        try:
            while True:
                # Wait without a limit while no frame is open (a slow source), else up to frame_timeout.
                read = asyncio.ensure_future(call.read())
                while True:
                    done, _ = await asyncio.wait({read}, timeout=min(0.5, frame_timeout / 4) if frame_timeout else None)
                    if done:
                        break
                    if frame_timeout and progress.overdue(frame_timeout):
                        read.cancel()
                        call.cancel()
                        raise ClientError("DEADLINE_EXCEEDED", f"no result for frame {progress.done} within "
                                          f"{frame_timeout:g}s (the per-frame deadline)")
                item = read.result()
                if item is grpc.aio.EOF:
                    break
                progress.received()
                yield stream_item_from_proto(item)
        except grpc.RpcError as exc:
            if progress.failure is not None:
                raise progress.failure from None
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()
        if progress.failure is not None:
            raise progress.failure

    async def list_models(self, timeout: Optional[float] = None) -> list[ModelInfo]:
        resp = await self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        return [model_from_proto(m) for m in resp.models]

    async def get_model(self, name: str, timeout: Optional[float] = None) -> ModelInfo:
        return model_from_proto(await self._call(self._stub.GetModel, pb.GetModelRequest(name=name), timeout))

    async def reload(self, timeout: Optional[float] = None) -> ReloadResult:
        """As `Client.reload`: the daemon re-reads its config file and applies it."""
        return reload_from_proto(await self._call(self._admin.Reload, admin_pb2.ReloadRequest(), timeout))

    async def health(self, service: str = "", timeout: Optional[float] = None) -> str:
        try:
            resp = await self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        except ClientError as exc:
            if exc.code != "NOT_FOUND":
                raise
            try:
                models = [m.name for m in await self.list_models(timeout)]
            except ClientError:
                models = None
            raise ClientError("NOT_FOUND", not_found_health(service, models)) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
