"""Synchronous client: numpy in, dataclasses out, one error type."""
from __future__ import annotations

import threading
import time
from typing import Iterable, Iterator, Mapping, Optional, Union

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ._channel import MAX_MESSAGE, TlsLike, channel_options, make_channel, token_metadata
from ._request import ImageLike, build_request
from edgeinfer_proto.edgeinfer.v1 import admin_pb2, admin_pb2_grpc
from edgeinfer_proto.edgeinfer.v1 import inference_pb2 as pb
from edgeinfer_proto.edgeinfer.v1 import inference_pb2_grpc as pb_grpc
from edgeinfer_proto.edgeinfer.v1 import streams_pb2 as spb
from edgeinfer_proto.edgeinfer.v1 import streams_pb2_grpc as spb_grpc
from .balancing import Address
from .errors import ClientError, from_rpc_error
from .types import (InferResult, ModelInfo, ReloadResult, StreamError, StreamFrameResult, StreamInfo,
                    model_from_proto, reload_from_proto, result_from_proto, stream_info_from_proto,
                    stream_item_from_proto, stream_result_from_proto)

DEFAULT_ADDRESS = "127.0.0.1:50051"
__all__ = ["Client", "DEFAULT_ADDRESS", "MAX_MESSAGE", "channel_options"]


def not_found_health(service: str, models: Optional[list[str]]) -> str:
    served = f"; models served: {', '.join(models)}" if models else ""
    return (f"no health status named {service!r}: the daemon answers '' (the whole daemon) and one name per "
            f"model{served}")


class Client:
    """Talks to one edgeinfer daemon.

    Args:
        address: "host:port" or "unix:/path"; or several daemons, spread round robin with
            UNAVAILABLE retried on the next one: a list of "host:port", or "dns:///name:port"
            (balancing.py).
        timeout: default deadline in seconds for each call (None = no deadline); for stream(),
            the longest wait for each frame's result (a stream itself may run for hours).
        tls: None/False for plain text; True for TLS checked against the system's trust roots;
            TlsOptions or a dict with `ca`, `cert`, `key` (paths or PEM bytes), `server_name`.
        token: a bearer token, sent as `authorization: Bearer <token>` on every call.

    Every method raises ClientError on failure; `.code` holds the gRPC status name.
    """

    def __init__(self, address: Address = DEFAULT_ADDRESS, timeout: Optional[float] = None, *,
                 tls: TlsLike = None, token: Optional[str] = None):
        self.address = address
        self.timeout = timeout
        self._metadata = token_metadata(token)
        self._channel = make_channel(address, tls)
        self._stub = pb_grpc.InferenceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._streams = spb_grpc.StreamsStub(self._channel)
        self._admin = admin_pb2_grpc.AdminStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, fn, request, timeout):
        try:
            return fn(request, timeout=self.timeout if timeout is None else timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def infer(self, model: str, image: Optional[ImageLike] = None, *,
              tensors: Optional[Mapping[str, np.ndarray]] = None, timeout: Optional[float] = None,
              **options) -> InferResult:
        """One inference.

        Args:
            model: the served model's name.
            image: encoded bytes (JPEG/PNG/BMP/WebP), a file path, or uint8 pixels
                (HxWxC; `pixel_format="rgb"` by default, "bgr" for OpenCV frames).
            tensors: named arrays fed to the model as they are (instead of an image).
            options: pixel_format, request_id, top_k, score_threshold,
                nms_iou_threshold, include_raw_outputs.
        """
        req = build_request(model, image, tensors=tensors, **options)
        return result_from_proto(self._call(self._stub.Infer, req, timeout))

    def stream(self, model: str, frames: Iterable[ImageLike], *, timeout: Optional[float] = None,
               request_id: str = "", **options) -> Iterator[Union[InferResult, StreamError]]:
        """Send frames over one InferStream; yields one result (or StreamError) per frame, in order.

        timeout: the longest wait for a frame's result once it is sent (default: the client's
            timeout); a slow source (a camera) never ends the stream, a stalled daemon does,
            with ClientError DEADLINE_EXCEEDED.
        request_id: a prefix: frame i is sent with request_id f"{request_id}{i}".
        """
        frame_timeout = self.timeout if timeout is None else timeout
        progress = _Progress()
        requests = progress.requests(model, frames, request_id, options)
        call = self._stub.InferStream(requests, metadata=self._metadata)
        watchdog = _Watchdog(progress, frame_timeout, call.cancel) if frame_timeout else None
        try:
            for item in call:
                progress.received()
                yield stream_item_from_proto(item)
        except grpc.RpcError as exc:
            if watchdog is not None and watchdog.fired:
                raise ClientError("DEADLINE_EXCEEDED", f"no result for frame {progress.done} within "
                                  f"{frame_timeout:g}s (the per-frame deadline)") from None
            if progress.failure is not None:
                raise progress.failure from None
            raise from_rpc_error(exc) from None
        finally:
            if watchdog is not None:
                watchdog.stop()
            # The consumer may stop early (closed pipe, break): end the call
            # cleanly instead of leaving it to die with the interpreter.
            call.cancel()
        if progress.failure is not None:
            raise progress.failure

    def list_models(self, timeout: Optional[float] = None) -> list[ModelInfo]:
        resp = self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        return [model_from_proto(m) for m in resp.models]

    def get_model(self, name: str, timeout: Optional[float] = None) -> ModelInfo:
        return model_from_proto(self._call(self._stub.GetModel, pb.GetModelRequest(name=name), timeout))

    # -- streams the daemon pulls itself ([[streams]]) -----------------------------------
    def streams(self, timeout: Optional[float] = None) -> list[StreamInfo]:
        """The daemon's streams: state, fps in/out, frame counts, reconnects, last error."""
        resp = self._call(self._streams.ListStreams, spb.ListStreamsRequest(), timeout)
        return [stream_info_from_proto(s) for s in resp.streams]

    def watch(self, name: str, *, count: Optional[int] = None, queue_size: int = 0,
              timeout: Optional[float] = None) -> Iterator[StreamFrameResult]:
        """Results of a stream's processed frames as they come, in frame order.

        Args:
            name: the stream's name.
            count: stop after this many results (None: until the daemon stops or `timeout`).
            queue_size: results this watcher may fall behind before the daemon drops its oldest
                (0 = the daemon's default); `StreamFrameResult.dropped` counts them.
            timeout: deadline in seconds for the whole watch; None = no deadline (not the client's
                default: a watch is endless).
        """
        call = self._streams.WatchStream(spb.WatchStreamRequest(name=name, queue_size=queue_size), timeout=timeout,
                                         metadata=self._metadata)
        seen = 0
        try:
            for item in call:
                yield stream_result_from_proto(item)
                seen += 1
                if count is not None and seen >= count:
                    return
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()

    def snapshot(self, name: str, draw_boxes: bool = False, timeout: Optional[float] = None) -> bytes:
        """The stream's latest frame as JPEG bytes (with the last result's boxes drawn when asked)."""
        resp = self._call(self._streams.GetSnapshot, spb.GetSnapshotRequest(name=name, draw_boxes=draw_boxes),
                          timeout)
        return resp.jpeg

    # -- administration (edgeinfer.v1.Admin) ---------------------------------------------
    def reload(self, timeout: Optional[float] = None) -> ReloadResult:
        """Make the daemon re-read its config file (as SIGHUP does); returns once every changed model
        serves its new version or failed to (the old one then serves on). A refused config is not an
        error here: `accepted` is False and `error` says why."""
        return reload_from_proto(self._call(self._admin.Reload, admin_pb2.ReloadRequest(), timeout))

    def health(self, service: str = "", timeout: Optional[float] = None) -> str:
        """"SERVING", "NOT_SERVING", ...; service "" is the whole daemon, a model name one model."""
        try:
            resp = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        except ClientError as exc:
            if exc.code != "NOT_FOUND":
                raise
            try:
                models = [m.name for m in self.list_models(timeout)]
            except ClientError:
                models = None
            raise ClientError("NOT_FOUND", not_found_health(service, models)) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def wait_ready(self, service: str = "", timeout: float = 60.0) -> None:
        """Block until `service` reports SERVING or `timeout` passes (ClientError DEADLINE_EXCEEDED)."""
        import time

        end = time.monotonic() + timeout
        last = "UNKNOWN"
        while time.monotonic() < end:
            try:
                last = self.health(service, timeout=max(0.1, min(2.0, end - time.monotonic())))
                if last == "SERVING":
                    return
            except ClientError as exc:
                last = exc.code
            time.sleep(0.1)
        raise ClientError("DEADLINE_EXCEEDED", f"{service or 'daemon'} not SERVING after {timeout}s (last: {last})")


class _Progress:
    """Frames sent and results received on one stream, and since when the oldest open frame waits."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sent = 0
        self.done = 0
        self.waiting_since: Optional[float] = None
        self.failure: Optional[ClientError] = None

    def requests(self, model, frames, request_id, options):
        """The request iterator gRPC reads: a frame that cannot be made ends the stream (the error is
        raised once the frames before it are answered) instead of gRPC's bare "Exception iterating requests!"."""
        for i, frame in enumerate(frames):
            try:
                req = build_request(model, frame, request_id=f"{request_id}{i}", **options)
            except ClientError as exc:
                self.failure = exc
                return
            with self.lock:
                self.sent += 1
                if self.waiting_since is None:
                    self.waiting_since = time.monotonic()
            yield req

    async def arequests(self, model, frames, request_id, options):
        """requests() for an async iterable of frames (AsyncClient): a slow source awaits without
        holding the event loop."""
        i = 0
        async for frame in frames:
            try:
                req = build_request(model, frame, request_id=f"{request_id}{i}", **options)
            except ClientError as exc:
                self.failure = exc
                return
            i += 1
            with self.lock:
                self.sent += 1
                if self.waiting_since is None:
                    self.waiting_since = time.monotonic()
            yield req

    def received(self):
        with self.lock:
            self.done += 1
            self.waiting_since = time.monotonic() if self.sent > self.done else None

    def overdue(self, limit: float) -> bool:
        with self.lock:
            return self.waiting_since is not None and time.monotonic() - self.waiting_since > limit


class _Watchdog:
    """Cancels a stream whose oldest open frame has waited longer than `limit` seconds."""

    def __init__(self, progress: _Progress, limit: float, cancel):
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(progress, limit, cancel),
                                        name="edgeinfer-stream-deadline", daemon=True)
        self._thread.start()

    def _run(self, progress, limit, cancel):
        tick = min(0.5, max(0.01, limit / 4))
        while not self._stop.wait(tick):
            if progress.overdue(limit):
                self.fired = True
                cancel()
                return

    def stop(self):
        self._stop.set()
