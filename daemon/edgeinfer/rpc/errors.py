"""Errors become gRPC statuses here, and only here."""
from __future__ import annotations

import functools
import logging

import grpc

from edgeinfer.errors import EdgeInferError
from edgeinfer.rpc.limits import ThrottledLog

log = logging.getLogger(__name__)
# An unexpected error may repeat on every request (a client can find the input that triggers it):
# its traceback is logged once per interval per exception type, not once per request.
_unexpected = ThrottledLog(log, 10.0)


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a client should see for `exc`."""
    if isinstance(exc, EdgeInferError):
        return exc.code, str(exc)
    _unexpected(logging.ERROR, type(exc).__name__, "unexpected error while serving a request", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


async def abort_with(context, exc: Exception) -> None:
    """End the call with `exc`'s status (an abort already under way passes through)."""
    if isinstance(exc, (grpc.aio.AbortError, grpc.aio.UsageError)):
        raise exc
    code, message = status_of(exc)
    await context.abort(code, message)


def translate_errors(method):
    """Decorator for unary async servicer methods: domain errors abort with their status.

    (Infer calls `abort_with` itself: on the inline path this wrapper's extra
    coroutine is a measurable share of a request.)
    """

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - every error becomes a status, never a crash
            await abort_with(context, exc)

    return wrapper
