"""One client error type: every gRPC failure becomes a ClientError."""
from __future__ import annotations

import grpc


class ClientError(Exception):
    """A call failed. `code` is the gRPC status name ("NOT_FOUND", "UNAVAILABLE", ...)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def from_rpc_error(exc: grpc.RpcError) -> ClientError:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = code.name if code is not None else "UNKNOWN"
    return ClientError(name, details or name)
