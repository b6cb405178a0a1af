"""One error hierarchy for the daemon. Each error knows its gRPC status code.

Errors are raised in domain code and translated to gRPC only at the edge
(rpc/errors.py), so the pipeline never imports grpc.
"""
from __future__ import annotations

import grpc


class EdgeInferError(Exception):
    """Base class; `code` is the gRPC status a client sees."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class ConfigError(EdgeInferError):
    """The configuration file is wrong; the message names file, table and key."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class InvalidInput(EdgeInferError):
    """The request is malformed: undecodable image, wrong shape or dtype, missing field."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFound(EdgeInferError):
    code = grpc.StatusCode.NOT_FOUND


class ModelNotReady(EdgeInferError):
    """The model is loading or failed to load."""

    code = grpc.StatusCode.UNAVAILABLE


class QueueFull(EdgeInferError):
    """The model's request queue is at its bound; try again later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExpired(EdgeInferError):
    """The client's deadline passed before the request reached the model."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class BackendUnavailable(EdgeInferError):
    """A backend cannot be used on this machine (library missing, no GPU)."""

    code = grpc.StatusCode.UNAVAILABLE


class BackendLoadError(EdgeInferError):
    """A backend is present but could not load or build this model."""

    code = grpc.StatusCode.UNAVAILABLE


class InferenceError(EdgeInferError):
    """The runtime failed while executing a request."""

    code = grpc.StatusCode.INTERNAL


class StreamNotFound(EdgeInferError):
    """No configured stream has this name."""

    code = grpc.StatusCode.NOT_FOUND


class StreamUnavailable(EdgeInferError):
    """The stream has nothing to give yet (no frame captured); the message says its state."""

    code = grpc.StatusCode.UNAVAILABLE


class LimitExceeded(EdgeInferError):
    """A per-client bound ([limits] rate_per_client, max_streams_per_connection) was reached."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
