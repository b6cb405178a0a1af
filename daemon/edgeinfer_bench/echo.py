"""The transport floor: a bare grpc.aio server in its own process that does no work.

It answers every request with one preallocated blob, `Unary` once a call and
`Stream` once a message, so the floor is measured with the daemon's own
request and response sizes: the parent sets the blob's size before each
measurement (`EchoServer.respond_with`). Requests are received as bytes and
never parsed. Its methods are served the way the daemon's are (a generic
handler; the unary method, like the daemon's Infer, also registered with gRPC's
core where grpcio can: rpc/methods.py), so that the two differ only by the
daemon's work. It runs in a separate
process started like the daemon's (spawn, same gRPC server options, same
event-loop choice).
"""
from __future__ import annotations

from typing import Optional

from edgeinfer_bench.child import ChildServer, report_failure

SERVICE = "edgeinfer_bench.Echo"
UNARY = f"/{SERVICE}/Unary"
STREAM = f"/{SERVICE}/Stream"
_MAX_MESSAGE = 64 * 1024 * 1024


def _handlers(blob: list[bytes]) -> dict:
    """The echo's methods; they answer `blob[0]`, which the parent's size messages replace."""
    import grpc

    async def unary(request, context):
        return blob[0]

    async def stream(request_iterator, context):
        async for _ in request_iterator:
            yield blob[0]

    return {"Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.stream_stream_rpc_method_handler(stream)}


async def _serve(conn, listen: str, share_port: bool = False) -> None:
    import asyncio

    import grpc

    from edgeinfer.rpc.methods import add_service

    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", _MAX_MESSAGE),
        ("grpc.max_send_message_length", _MAX_MESSAGE),
        ("grpc.so_reuseport", 1 if share_port else 0),
    ])
    blob = [bytes(256)]
    add_service(server, SERVICE, _handlers(blob), registered=("Unary",))
    port = server.add_insecure_port(listen)
    await server.start()
    conn.send(("port", port))
    loop = asyncio.get_running_loop()
    # ("size", n) sets the answers' size; anything else, or a closed pipe, stops us.
    while True:
        message = await loop.run_in_executor(None, conn.recv)
        if not (isinstance(message, tuple) and message[0] == "size"):
            break
        size = int(message[1])
        if 0 <= size <= _MAX_MESSAGE:
            blob[0] = bytes(size)
            conn.send(("size", size))
        else:
            conn.send(("error", f"answer size {size} is not within 0..{_MAX_MESSAGE} bytes"))
    await server.stop(0.5)


def _main(conn, listen: str, loop_kind: str, share_port: bool = False) -> None:
    from edgeinfer.process.eventloop import run

    try:
        run(_serve(conn, listen, share_port), loop_kind)
    except EOFError:
        pass  # parent went away
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        report_failure(conn, exc)


class EchoServer(ChildServer):
    """Context manager: a bare echo server in a child process on a free loopback port.

    Example:
        with EchoServer() as echo:
            echo.respond_with(200)
            run_load(LoadSpec(echo.address, UNARY, "unary", [b"x" * 64], 1, 1.0))
    """

    def __init__(self, loop: str = "asyncio", listen: str = "127.0.0.1:0", cpus: frozenset[int] = frozenset(),
                 processes: int = 1, share_port: bool = False):
        super().__init__(cpus)
        self.loop = loop
        self.listen = listen
        # processes > 1: that many echo processes on one port (SO_REUSEPORT), as the daemon's
        # [server] processes front-ends share theirs: the transport bound of N front-ends.
        self.processes = max(1, int(processes))
        self.share_port = share_port or self.processes > 1
        self._others: list[EchoServer] = []

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    @property
    def pids(self) -> list[int]:
        """Every echo process (the first is `pid`)."""
        return [e.pid for e in [self] + self._others if e.pid is not None]

    def start(self, timeout: float = 30.0) -> "EchoServer":
        what, value = self._spawn(_main, (self.listen, self.loop, self.share_port), "edgeinfer-bench-echo",
                                  timeout, "echo server did not start")
        if what != "port" or not value:
            raise self._failed("echo server", value)
        self.port = int(value)
        try:
            for _ in range(self.processes - 1):
                host = self.listen.rsplit(":", 1)[0]
                self._others.append(EchoServer(self.loop, f"{host}:{self.port}", self.cpus,
                                               share_port=True).start(timeout))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for other in self._others:
            other.stop()
        self._others = []
        super().stop()

    def respond_with(self, size: int, timeout: float = 10.0) -> None:
        """Answer every later call (Unary) or message (Stream) with `size` bytes.

        Raises:
            RuntimeError: the echo refused the size or did not confirm it within `timeout`.
        """
        if self._conn is None:
            raise RuntimeError("echo server is not running")
        self._conn.send(("size", int(size)))
        if not self._conn.poll(timeout):
            raise RuntimeError(f"echo server did not confirm answer size {size} within {timeout:.0f}s")
        reply = self._conn.recv()
        if reply != ("size", int(size)):
            raise RuntimeError(f"echo server refused answer size {size}: {reply[-1]}")
        for other in self._others:
            other.respond_with(size, timeout)
