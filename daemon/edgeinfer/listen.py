"""host:port addresses as the config writes them ("host:port", "[v6]:port", ":port")."""
from __future__ import annotations

import socket


def parse_listen(listen: str, what: str = "[metrics] listen") -> tuple[str, int]:
    """"host:port", "[v6]:port" or ":port" (all interfaces) -> (host, port).

    Raises:
        ValueError: the text is not host:port with a port 0..65535 (the message names `what`).
    """
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{what}: expected host:port, got {listen!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "0.0.0.0", int(port_text)


def join_listen(host: str, port: int) -> str:
    """The inverse of parse_listen: brackets around an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def claim_listen(listen: str, what: str = "[server] listen") -> str:
    """Bind `listen` once, without SO_REUSEPORT, and let go: a taken port fails here with one
    clear OSError ("cannot listen on ...") before gRPC's core logs its own error and raises a
    bare RuntimeError, and before several processes share the port. Returns the address with its
    real port (port 0: a free one, for processes that must agree on it); `unix:` paths as given.
    SO_REUSEADDR as gRPC sets it, so a closed port's lingering connections do not count as taken.

    Raises:
        ValueError: not host:port. OSError: the host does not resolve or the port is taken.
    """
    if listen.startswith("unix:"):
        return listen
    host, port = parse_listen(listen, what)
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError as exc:
        raise OSError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            raise OSError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
        return join_listen(host, s.getsockname()[1])
