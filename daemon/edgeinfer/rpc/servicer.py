"""The edgeinfer.v1.Inference servicer: thin, it converts and delegates.

Decoding, preprocessing, inference and postprocessing run on the worker pool
(see `InferencePipeline`); the event loop only moves messages.
"""
from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Callable, Optional

import grpc
from edgeinfer_proto.edgeinfer.v1 import inference_pb2 as pb
from edgeinfer_proto.edgeinfer.v1 import inference_pb2_grpc as pb_grpc

from edgeinfer.config import LimitsConfig
from edgeinfer.errors import EdgeInferError, InferenceError, InvalidInput
from edgeinfer.observe.metrics import UNKNOWN_MODEL
from edgeinfer.model.registry import ModelRegistry
from edgeinfer.rpc import converters
from edgeinfer.rpc.errors import abort_with, status_of, translate_errors
from edgeinfer.rpc.fastpath import InlineTensorPath
from edgeinfer.rpc.limits import RateLimiter, StreamSlots, ThrottledLog, capped_deadline
from edgeinfer.rpc.methods import Malformed, add_service, tolerant
from edgeinfer.model.types import ModelState, Tensors
from edgeinfer.serving.lanes import InferencePipeline, Route

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Inference"].full_name


def _runtime_refused(exc: InferenceError, item: Tensors, model) -> Optional[InvalidInput]:
    """A runtime failure on tensors whose shape differs from those the model ran at warm-up is the
    request's fault (e.g. a spatial size the network's layers cannot combine): INVALID_ARGUMENT.
    On the shapes it ran, the failure is the daemon's and stays INTERNAL (None)."""
    try:
        tested = model.example_shapes(1)
    except Exception:  # noqa: BLE001 - no runner any more: keep the runtime's answer
        return None
    if all(name in tested and tuple(a.shape[1:]) == tested[name][1:] for name, a in item.arrays.items()):
        return None
    shapes = ", ".join(f"{n} {list(a.shape)} {a.dtype}" for n, a in item.arrays.items())
    return InvalidInput(f"model {model.name!r} cannot run on the tensors sent ({shapes}): {exc}")


class InferenceServicer(pb_grpc.InferenceServicer):
    def __init__(self, registry: ModelRegistry, pipeline: InferencePipeline, stream_window: int = 16,
                 limits: Optional[LimitsConfig] = None):
        self.registry = registry
        self.pipeline = pipeline
        self.stream_window = stream_window
        limits = limits or LimitsConfig()
        self.limits = limits
        self.rate_limiter = RateLimiter(limits.rate_per_client, limits.rate_burst) if limits.rate_per_client else None
        self._streams = StreamSlots(limits.max_streams_per_connection)
        self._max_deadline = limits.max_deadline_s or None
        self.client_log = ThrottledLog(log, limits.client_error_log_interval_s)
        # model name -> the short path of a model whose tensor requests run inline (rpc/fastpath.py);
        # set by route() when the model's runner is ready, forgotten when it stops or is replaced.
        self._inline: dict[str, InlineTensorPath] = {}
        # Open InferStreams' readers (the task, and whether it is waiting for the client's next frame);
        # drain_streams() stops them reading.
        self._readers: dict[asyncio.Task, list[bool]] = {}
        self._draining = False

    def drain_streams(self) -> int:
        """Shutdown: every open InferStream stops reading frames, answers those it has read, and
        ends with UNAVAILABLE (the client reconnects). Returns how many were open."""
        self._draining = True
        for task, waiting in list(self._readers.items()):
            if waiting[0]:  # waiting for a frame that would come after the signal: stop waiting
                task.cancel()
        return len(self._readers)

    def _answer_inline(self, request: pb.InferRequest) -> Optional[pb.InferResponse]:
        """The short path's answer, or None: the request takes the general path."""
        path = self._inline.get(request.model)
        if path is None:
            return None
        if not path.current():
            # The model was reloaded or stopped: forget the path, which holds the old runner.
            del self._inline[request.model]
            return None
        try:
            return path.answer(request)
        except Exception as exc:
            self._count_failure(path.name, exc)
            raise

    def route(self, model) -> None:
        """Choose how the model's requests run, once its runner is ready (called by the daemon on
        every state change): the pipeline's lane for that runner, and this edge's short path when the
        lane runs inline and the short path answers the model's requests as the general path would."""
        if model.state is not ModelState.READY or model.runner is None:
            self._inline.pop(model.name, None)
            return
        try:
            lane = self.pipeline.lane(model)
        except EdgeInferError:  # stopped meanwhile
            self._inline.pop(model.name, None)
            return
        if lane.route is not Route.INLINE or not InlineTensorPath.suits(model):
            self._inline.pop(model.name, None)
            return
        path = self._inline.get(model.name)
        if path is None or path.runner is not lane.runner:
            self._inline[model.name] = InlineTensorPath(model, lane.runner, self.pipeline.metrics)

    def _count_failure(self, label: str, exc: BaseException) -> None:
        self.pipeline.record(label, exc.code.name if isinstance(exc, EdgeInferError) else "INTERNAL")

    def _malformed(self, request: Malformed, peer: str) -> InvalidInput:
        """Count and (throttled) log a message that did not parse; the error to answer."""
        self.pipeline.record(UNKNOWN_MODEL, "INVALID_ARGUMENT")
        self.client_log(logging.WARNING, "malformed", "malformed %s from %s: %s", request.what, peer, request.reason)
        return request.error()

    async def _answer(self, request: pb.InferRequest,
                      time_remaining: Callable[[], Optional[float]] = lambda: None) -> pb.InferResponse:
        # Every request is counted once, by model and status (metrics); a name
        # that is not served counts as "(unknown)" so clients cannot mint series.
        label = UNKNOWN_MODEL
        deadline_s = capped_deadline(time_remaining(), self._max_deadline)
        item = None
        try:
            model = self.registry.get(request.model)
            label = model.name
            limits = self.limits
            item = converters.request_input(request, limits.max_tensor_bytes, limits.max_batch_rows)
            options = converters.request_options(request)
            try:
                prediction = await self.pipeline.run(model, item, options, deadline_s)
            except InferenceError as exc:
                refused = _runtime_refused(exc, item, model) if isinstance(item, Tensors) else None
                if refused is not None:
                    raise refused from None
                raise
            response = converters.response(model, request.request_id, prediction)
        except asyncio.CancelledError:
            self.pipeline.record_cancelled(label, time_remaining())
            raise
        except Exception as exc:
            self._count_failure(label, exc)
            raise
        self.pipeline.record(label, "OK")
        return response

    async def Infer(self, request, context):
        """Answers serialized bytes (see add_to_server): the short path's message is refilled by its
        next request, so its bytes are taken now."""
        try:
            if type(request) is Malformed:
                raise self._malformed(request, context.peer())
            if self.rate_limiter is not None:
                self.rate_limiter.take(context.peer())
            response = self._answer_inline(request)
            if response is None:
                response = await self._answer(request, context.time_remaining)
            return response.SerializeToString()
        except Exception as exc:  # noqa: BLE001 - every error becomes a status, never a crash
            await abort_with(context, exc)

    async def InferStream(self, request_iterator, context) -> AsyncIterator[pb.StreamResponse]:
        """Ordered results; up to `stream_window` frames in flight; a failed frame answers an error."""
        # Each entry is a finished StreamResponse (the inline path answered as the frame was read)
        # or a task making one; None ends the stream. A FIFO of both keeps the frames' order.
        pending: asyncio.Queue = asyncio.Queue(maxsize=self.stream_window)
        peer = context.peer()
        try:
            self._streams.acquire(peer)
        except Exception as exc:  # noqa: BLE001 - LimitExceeded
            await abort_with(context, exc)
        rate = self.rate_limiter

        def failed(seq: int, request: pb.InferRequest, exc: BaseException) -> pb.StreamResponse:
            code, message = status_of(exc)
            request_id = "" if type(request) is Malformed else request.request_id
            return pb.StreamResponse(request_id=request_id, sequence=seq,
                                     error=converters.error_status(code, message))

        async def one(seq: int, request: pb.InferRequest) -> pb.StreamResponse:
            try:
                resp = await self._answer(request)
                return pb.StreamResponse(request_id=request.request_id, sequence=seq, response=resp)
            except Exception as exc:  # noqa: BLE001 - one bad frame never breaks the stream
                return failed(seq, request, exc)

        def start(seq: int, request: pb.InferRequest):
            # A frame the inline path answers needs no task. Dev box, trivial model, one stream,
            # 12 rounds each: 4,074 frames/s with a task per frame, 4,241 without.
            try:
                if type(request) is Malformed:
                    raise self._malformed(request, peer)
                if rate is not None:
                    rate.take(peer)
                resp = self._answer_inline(request)
            except Exception as exc:  # noqa: BLE001 - as in one()
                return failed(seq, request, exc)
            if resp is not None:
                return pb.StreamResponse(request_id=request.request_id, sequence=seq, response=resp)
            return asyncio.ensure_future(one(seq, request))

        # [waiting for the client's next frame (only then may a drain cancel the reader),
        #  the reader stopped because of a drain (the stream then ends UNAVAILABLE)]
        waiting = [False, False]

        async def reader() -> None:
            seq = 0
            frames = request_iterator.__aiter__()
            try:
                while True:
                    if self._draining:
                        waiting[1] = True
                        break
                    waiting[0] = True
                    try:
                        request = await frames.__anext__()
                    except StopAsyncIteration:
                        break
                    except asyncio.CancelledError:
                        if self._draining:
                            waiting[1] = True
                        raise
                    finally:
                        waiting[0] = False
                    # put() blocks while the window is full: back-pressure to the client.
                    await pending.put(start(seq, request))
                    seq += 1
            finally:
                await pending.put(None)

        reader_task = asyncio.ensure_future(reader())
        self._readers[reader_task] = waiting
        try:
            while True:
                item = await pending.get()
                if item is None:
                    break
                yield item if isinstance(item, pb.StreamResponse) else await item
            if waiting[1]:
                # Every frame read was answered; frames the client sent after these were not read.
                if not reader_task.done():
                    await asyncio.wait([reader_task])
                context.set_code(grpc.StatusCode.UNAVAILABLE)
                context.set_details("the daemon is shutting down: every frame it read was answered; "
                                    "send the rest again after reconnecting")
                return
            await reader_task  # surfaces a broken client stream
        finally:
            self._streams.release(peer)
            self._readers.pop(reader_task, None)
            if not reader_task.done():
                reader_task.cancel()
            while not pending.empty():
                item = pending.get_nowait()
                if isinstance(item, asyncio.Future):
                    item.cancel()

    @translate_errors
    async def ListModels(self, request, context):
        if type(request) is Malformed:
            raise self._malformed(request, context.peer())
        return pb.ListModelsResponse(models=[converters.model_info(m) for m in self.registry])

    @translate_errors
    async def GetModel(self, request, context):
        if type(request) is Malformed:
            raise self._malformed(request, context.peer())
        return converters.model_info(self.registry.get(request.name))


def add_to_server(servicer: InferenceServicer, server) -> None:
    """Serve `servicer` as edgeinfer.v1.Inference: the generated add_InferenceServicer_to_server,
    except that Infer answers serialized bytes (see Infer), which gRPC sends as they are (no
    serializer). Infer, called once per request, is also registered with gRPC's core where grpcio can;
    the other methods are looked up by the generic handler (methods.add_service says why)."""
    handlers = {
        "Infer": grpc.unary_unary_rpc_method_handler(
            servicer.Infer, request_deserializer=tolerant(pb.InferRequest)),
        "InferStream": grpc.stream_stream_rpc_method_handler(
            servicer.InferStream, request_deserializer=tolerant(pb.InferRequest),
            response_serializer=pb.StreamResponse.SerializeToString),
        "ListModels": grpc.unary_unary_rpc_method_handler(
            servicer.ListModels, request_deserializer=tolerant(pb.ListModelsRequest),
            response_serializer=pb.ListModelsResponse.SerializeToString),
        "GetModel": grpc.unary_unary_rpc_method_handler(
            servicer.GetModel, request_deserializer=tolerant(pb.GetModelRequest),
            response_serializer=pb.ModelInfo.SerializeToString),
    }
    add_service(server, SERVICE_NAME, handlers, registered=("Infer",))
