"""Errors become gRPC statuses here, and only here."""
from __future__ import annotations

import functools
import logging

import grpc

from ..errors import EdgeInferError

log = logging.getLogger(__name__)


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a client should see for `exc`."""
    if isinstance(exc, EdgeInferError):
        return exc.code, str(exc)
    log.exception("unexpected error while serving a request", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


def translate_errors(method):
    """Decorator for unary async servicer methods: domain errors abort with their status."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except Exception as exc:  # noqa: BLE001 - every error becomes a status, never a crash
            code, message = status_of(exc)
            await context.abort(code, message)

    return wrapper
