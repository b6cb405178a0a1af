"""Adding services' method handlers to a gRPC server: every method through a generic handler, the
per-request ones also registered with gRPC's core.

Registering a method with the core (grpcio >= 1.63, as newer grpcio-tools generate) lets the
core match its calls itself instead of asking the generic handlers in Python: 6-10 us of server
CPU a call less (probes, trivial model at concurrency 8 on the 2-core dev box).

But grpc.aio's server keeps one pending call request per registered method, plus one for all
generic calls, and waits on all of them with `asyncio.wait` to take each call. That Python work
grows with the number of registered methods and is paid on every call. Measured on the dev box
(trivial model at c=8, a daemon whose Infer answered a constant): with all eight of
its methods registered (Inference's four, health's three, reflection's one) it cost 167 us of
server CPU a request; with Infer alone, 159 us and 6.7% more requests a second (10 of 12 rounds).
So only the methods called once per request are registered. The others (ListModels, GetModel,
health checks, reflection, and a stream, which is looked up once per stream, not per message)
go through the generic handlers, a few microseconds a call.
"""
from __future__ import annotations

import inspect
from typing import Iterable

import grpc

from edgeinfer.errors import InvalidInput


class Malformed:
    """What a request deserializer hands over instead of raising on bytes that are not the message:
    grpc answers a raising deserializer with UNKNOWN and logs a traceback per call; the handler
    answers this one INVALID_ARGUMENT."""

    __slots__ = ("what", "reason")

    def __init__(self, what: str, reason: str):
        self.what = what
        self.reason = reason

    def error(self) -> InvalidInput:
        return InvalidInput(f"the request is not a valid {self.what} message: {self.reason}")


def tolerant(message_cls):
    """A request deserializer that returns Malformed rather than raising (its handler checks)."""
    return _tolerant(message_cls.FromString, message_cls.DESCRIPTOR.full_name)


def _tolerant(parse, what: str):
    def deserialize(data: bytes):
        try:
            return parse(data)
        except Exception as exc:  # noqa: BLE001 - DecodeError and friends: whatever the bytes were
            return Malformed(what, str(exc) or type(exc).__name__)

    deserialize.tolerant = True
    return deserialize


def guarded(handler):
    """The same method handler, except that a request whose bytes are not its message answers
    INVALID_ARGUMENT with what failed to parse (never UNKNOWN with a logged traceback). Handlers
    whose deserializer is already tolerant (they count and log malformed requests themselves)
    and handlers without a deserializer are returned as they are."""
    parse = getattr(handler, "request_deserializer", None)
    if parse is None or getattr(parse, "tolerant", False):
        return handler
    owner = getattr(parse, "__self__", None)
    what = owner.DESCRIPTOR.full_name if hasattr(owner, "DESCRIPTOR") else "request"
    deserialize = _tolerant(parse, what)

    async def refuse(context, bad: Malformed):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(bad.error()))

    async def checked(requests, context):
        async for request in requests:
            if isinstance(request, Malformed):
                await refuse(context, request)
            yield request

    inner = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    if not (inspect.iscoroutinefunction(inner) or inspect.isasyncgenfunction(inner)):
        return handler  # a sync server's handler: left as it is
    if handler.unary_unary is not None:
        async def unary_unary(request, context):
            if isinstance(request, Malformed):
                await refuse(context, request)
            return await inner(request, context)
        return grpc.unary_unary_rpc_method_handler(unary_unary, deserialize, handler.response_serializer)
    generates = inspect.isasyncgenfunction(inner)  # else a coroutine that writes with context.write
    if handler.unary_stream is not None:
        if generates:
            async def unary_stream(request, context):
                if isinstance(request, Malformed):
                    await refuse(context, request)
                async for response in inner(request, context):
                    yield response
        else:
            async def unary_stream(request, context):
                if isinstance(request, Malformed):
                    await refuse(context, request)
                return await inner(request, context)
        return grpc.unary_stream_rpc_method_handler(unary_stream, deserialize, handler.response_serializer)
    if handler.stream_unary is not None:
        async def stream_unary(requests, context):
            return await inner(checked(requests, context), context)
        return grpc.stream_unary_rpc_method_handler(stream_unary, deserialize, handler.response_serializer)
    if generates:
        async def stream_stream(requests, context):
            async for response in inner(checked(requests, context), context):
                yield response
    else:
        async def stream_stream(requests, context):
            return await inner(checked(requests, context), context)
    return grpc.stream_stream_rpc_method_handler(stream_stream, deserialize, handler.response_serializer)


class _Guarded(grpc.GenericRpcHandler):
    """A generic handler whose method handlers are guarded()."""

    def __init__(self, inner):
        self._inner = inner

    def service(self, handler_call_details):
        handler = self._inner.service(handler_call_details)
        return guarded(handler) if handler is not None else None

    def service_name(self):
        """The wrapped handler's service (grpc asks generic handlers of a service for it)."""
        return self._inner.service_name()


def add_service(server, service_name: str, handlers: dict[str, grpc.RpcMethodHandler],
                registered: Iterable[str] = ()) -> None:
    """Serve `handlers` ({method name: handler}) as `service_name` on `server` (grpc.Server or
    grpc.aio.Server): a generic handler for every method, and the methods named in `registered`
    also registered with gRPC's core where grpcio offers it (>= 1.63; on 1.62, our floor, the
    generic handler serves them too). Registered handlers win over generic ones.

    Raises:
        KeyError: a name in `registered` is not one of `handlers`.
    """
    handlers = {name: guarded(h) for name, h in handlers.items()}
    hot = {name: handlers[name] for name in registered}  # first: a wrong name adds nothing
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_name, handlers),))
    register = getattr(server, "add_registered_method_handlers", None)
    if register is not None and hot:
        register(service_name, hot)


class GenericOnly:
    """`server` as a generated `add_*Servicer_to_server` function should see it: the function's
    generic handler is added, its registration of every method with the core is left out
    (see the module docstring). For services called rarely: health checks, reflection."""

    def __init__(self, server):
        self._server = server

    def add_generic_rpc_handlers(self, handlers) -> None:
        self._server.add_generic_rpc_handlers(tuple(_Guarded(h) for h in handlers))

    def add_registered_method_handlers(self, service_name: str, handlers) -> None:
        pass  # deliberately not registered: each registered method costs every call (module docstring)
