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

from typing import Iterable

import grpc


def add_service(server, service_name: str, handlers: dict[str, grpc.RpcMethodHandler],
                registered: Iterable[str] = ()) -> None:
    """Serve `handlers` ({method name: handler}) as `service_name` on `server` (grpc.Server or
    grpc.aio.Server): a generic handler for every method, and the methods named in `registered`
    also registered with gRPC's core where grpcio offers it (>= 1.63; on 1.62, our floor, the
    generic handler serves them too). Registered handlers win over generic ones.

    Raises:
        KeyError: a name in `registered` is not one of `handlers`.
    """
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
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service_name: str, handlers) -> None:
        pass  # deliberately not registered: each registered method costs every call (module docstring)
