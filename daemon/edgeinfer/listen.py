"""host:port addresses as the config writes them ("host:port", "[v6]:port", ":port")."""
from __future__ import annotations


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
