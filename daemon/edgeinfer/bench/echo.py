"""The transport floor: a bare grpc.aio server in its own process that does no work.

It answers every request with a response of a fixed size named in the method
(`/edgeinfer.bench.Echo/Unary<bytes>`, `.../Stream<bytes>`), so the floor is
measured with the daemon's own request and response sizes. Requests are
received as bytes and never parsed; responses are one preallocated blob.
It runs in a separate process started like the daemon's (spawn, same gRPC
server options, same event-loop choice) so the two differ only by the
daemon's work.
"""
from __future__ import annotations

import re
from typing import Optional

from .child import ChildServer, report_failure

SERVICE = "edgeinfer.bench.Echo"
_METHOD = re.compile(rf"^/{re.escape(SERVICE)}/(Unary|Stream)(\d+)$")
_MAX_MESSAGE = 64 * 1024 * 1024


def unary_method(response_bytes: int) -> str:
    return f"/{SERVICE}/Unary{int(response_bytes)}"


def stream_method(response_bytes: int) -> str:
    return f"/{SERVICE}/Stream{int(response_bytes)}"


def _handler():
    import grpc

    blobs: dict[int, bytes] = {}

    def blob(n: int) -> bytes:
        if n not in blobs:
            blobs[n] = bytes(n)
        return blobs[n]

    class EchoHandler(grpc.GenericRpcHandler):
        def service(self, details):
            m = _METHOD.match(details.method)
            if m is None:
                return None
            kind, size = m.group(1), int(m.group(2))
            if size > _MAX_MESSAGE:
                return None
            payload = blob(size)
            if kind == "Unary":
                async def unary(request, context):
                    return payload
                return grpc.unary_unary_rpc_method_handler(unary)

            async def stream(request_iterator, context):
                async for _ in request_iterator:
                    yield payload
            return grpc.stream_stream_rpc_method_handler(stream)

    return EchoHandler()


async def _serve(conn, listen: str) -> None:
    import asyncio

    import grpc

    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", _MAX_MESSAGE),
        ("grpc.max_send_message_length", _MAX_MESSAGE),
        ("grpc.so_reuseport", 0),
    ])
    server.add_generic_rpc_handlers((_handler(),))
    port = server.add_insecure_port(listen)
    await server.start()
    conn.send(("port", port))
    loop = asyncio.get_running_loop()
    # The parent closes or writes to the pipe to stop us.
    await loop.run_in_executor(None, conn.recv)
    await server.stop(0.5)


def _main(conn, listen: str, loop_kind: str) -> None:
    from ..eventloop import run

    try:
        run(_serve(conn, listen), loop_kind)
    except EOFError:
        pass  # parent went away
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        report_failure(conn, exc)


class EchoServer(ChildServer):
    """Context manager: a bare echo server in a child process on a free loopback port.

    Example:
        with EchoServer() as echo:
            run_load(LoadSpec(echo.address, unary_method(200), "unary", [b"x" * 64], 1, 1.0))
    """

    def __init__(self, loop: str = "asyncio", listen: str = "127.0.0.1:0", cpus: frozenset[int] = frozenset()):
        super().__init__(cpus)
        self.loop = loop
        self.listen = listen

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 30.0) -> "EchoServer":
        what, value = self._spawn(_main, (self.listen, self.loop), "edgeinfer-bench-echo", timeout,
                                  "echo server did not start")
        if what != "port" or not value:
            raise self._failed("echo server", value)
        self.port = int(value)
        return self
