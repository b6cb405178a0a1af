"""Client library for the edgeinfer daemon: numpy in, dataclasses out.

    from edgeinfer_client import Client
    with Client("127.0.0.1:50051") as c:
        print(c.infer("imagenet", "cat.jpg").classes[0])

Installs with grpcio, protobuf and numpy only (no OpenCV, no inference runtime).
"""
from ._channel import TlsOptions
from .aio import AsyncClient
from .client import DEFAULT_ADDRESS, Client
from ._request import build_request
from .errors import ClientError
from .types import (Accuracy, Attempt, ClassScore, Detection, InferResult, ModelChange, ModelInfo, ReloadResult,
                    StreamError, StreamFrameResult, StreamInfo, TensorInfo)

__all__ = ["Accuracy", "AsyncClient", "Attempt", "ClassScore", "Client", "ClientError", "DEFAULT_ADDRESS",
           "Detection", "InferResult", "ModelChange", "ModelInfo", "ReloadResult", "StreamError",
           "StreamFrameResult", "StreamInfo", "TensorInfo", "TlsOptions", "build_request"]
