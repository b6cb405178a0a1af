"""The KServe v2 gRPC servicer (inference.GRPCInferenceService), beside edgeinfer.v1 on one port.

One data plane, two protocols: tensors and encoded images go to the served model through
the same `InferencePipeline.run` as edgeinfer.v1 (same lanes, batching, queue bounds, deadlines
and Prometheus metrics). Only the messages differ (rpc/kserve_converters.py).

Statuses follow what Triton answers, since its clients print them: an unknown model is
NOT_FOUND ("Request for unknown model: ..."), a model that is loading, failed or unloaded is
UNAVAILABLE, a malformed request INVALID_ARGUMENT, a full queue RESOURCE_EXHAUSTED.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Optional

import grpc
from edgeinfer_proto.inference import grpc_service_pb2 as pb

from edgeinfer.errors import EdgeInferError, InvalidInput, ModelNotFound, ModelNotReady
from edgeinfer.model.registry import ModelRegistry
from edgeinfer.model.served import ServedModel
from edgeinfer.model.types import EncodedImage, ModelState, Prediction, Tensors
from edgeinfer.observe.metrics import UNKNOWN_MODEL
from edgeinfer.rpc import kserve_converters as conv
from edgeinfer.config import LimitsConfig
from edgeinfer.rpc.errors import abort_with, status_of, translate_errors
from edgeinfer.rpc.limits import RateLimiter, capped_deadline, check_arrays
from edgeinfer.rpc.methods import add_service
from edgeinfer.serving.lanes import InferencePipeline

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
EXTENSIONS = ["model_repository", "model_configuration", "statistics"]
UNLOADED = "unloaded by RepositoryModelUnload; RepositoryModelLoad loads it again"


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class _ModelStats:
    """What ModelStatistics reports for one model: this protocol's requests."""

    last_inference_ms: int = 0
    inference_count: int = 0  # rows (batch items) inferred
    execution_count: int = 0  # model runs (an image request of N rows is N runs)
    success: _Duration = field(default_factory=_Duration)
    fail: _Duration = field(default_factory=_Duration)
    queue: _Duration = field(default_factory=_Duration)
    compute_input: _Duration = field(default_factory=_Duration)
    compute_infer: _Duration = field(default_factory=_Duration)
    compute_output: _Duration = field(default_factory=_Duration)
    batches: dict[int, _Duration] = field(default_factory=dict)


class KServeServicer:
    def __init__(self, registry: ModelRegistry, pipeline: InferencePipeline, version: str,
                 stream_window: int = 16, limits: Optional[LimitsConfig] = None,
                 rate_limiter: Optional[RateLimiter] = None):
        """limits, rate_limiter: [limits] as edgeinfer.v1 applies them; the rate limiter is edgeinfer.v1's
        own, so a client's requests count against one rate whichever protocol carries them."""
        self.registry = registry
        self.limits = limits or LimitsConfig()
        self.rate_limiter = rate_limiter
        self.pipeline = pipeline
        self.version = version
        self.stream_window = stream_window
        self._stats: dict[str, _ModelStats] = {}
        self._stats_lock = threading.Lock()
        self._reload_locks: dict[str, asyncio.Lock] = {}

    # -- lookups ------------------------------------------------------------------
    def _model(self, name: str, version: str = "") -> ServedModel:
        if not name:
            raise InvalidInput("request names no model (field 'model_name' / 'name' is empty)")
        model = self.registry.models.get(name)
        if model is None:
            raise ModelNotFound(f"Request for unknown model: '{name}' is not found "
                                f"(served models: {sorted(self.registry.models)})")
        if version and version != model.cfg.version:
            raise ModelNotFound(f"Request for unknown model: '{name}' version {version} is not found "
                                f"(served version: {model.cfg.version})")
        return model

    def _serving(self, name: str, version: str = "") -> ServedModel:
        model = self._model(name, version)
        if model.unloaded:
            raise ModelNotReady(f"Request for unknown model: '{name}' has no available versions ({UNLOADED})")
        return model

    # -- health and metadata -------------------------------------------------------
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        # As edgeinfer.v1's overall health: every model finished loading and one serves.
        states = [m.state for m in self.registry]
        return pb.ServerReadyResponse(ready=ModelState.LOADING not in states and ModelState.READY in states)

    @translate_errors
    async def ModelReady(self, request, context):
        # A name or version not served is not ready, as Triton answers (clients poll with this).
        model = self.registry.models.get(request.name)
        ready = (model is not None and request.version in ("", model.cfg.version)
                 and model.state is ModelState.READY and model.runner is not None)
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="edgeinfer", version=self.version, extensions=EXTENSIONS)

    @translate_errors
    async def ModelMetadata(self, request, context):
        return conv.model_metadata(self._model(request.name, request.version))

    @translate_errors
    async def ModelConfig(self, request, context):
        model = self._model(request.name, request.version)
        max_batch = self.pipeline.max_batch(model) if model.runner is not None else 0
        return pb.ModelConfigResponse(config=conv.model_config(model, max_batch))

    # -- inference -----------------------------------------------------------------
    async def _infer(self, request: pb.ModelInferRequest,
                     time_remaining: Callable[[], Optional[float]] = lambda: None) -> pb.ModelInferResponse:
        label = UNKNOWN_MODEL
        start = time.perf_counter_ns()
        model = None
        try:
            model = self._serving(request.model_name, request.model_version)
            label = model.name
            arrays = conv.request_arrays(request)
            check_arrays(arrays, self.limits.max_tensor_bytes, self.limits.max_batch_rows)
            options = conv.request_options(request)
            images = conv.image_rows(arrays, model)
            deadline_s = capped_deadline(time_remaining(), self.limits.max_deadline_s or None)
            if images is None:
                tensors = Tensors(arrays)
                predictions = [await self.pipeline.run(model, tensors, options, deadline_s)]
                outputs, rows = predictions[0].result.outputs, tensors.rows
            else:
                predictions = await self._run_images(model, images, options, deadline_s)
                rows = len(images)
                outputs = conv.image_outputs(model, [p.result for p in predictions])
            response = conv.response(model, request, outputs)
        except asyncio.CancelledError:
            self.pipeline.record_cancelled(label, time_remaining())
            raise
        except Exception as exc:
            # status_of would log an unexpected error here and again where the call ends.
            self.pipeline.record(label, exc.code.name if isinstance(exc, EdgeInferError) else "INTERNAL")
            if model is not None:
                self._count(model.name, time.perf_counter_ns() - start, None, 0)
            raise
        self.pipeline.record(label, "OK")
        self._count(model.name, time.perf_counter_ns() - start, predictions, rows)
        return response

    async def _run_images(self, model: ServedModel, images: list[bytes], options,
                          deadline_s: Optional[float]) -> list[Prediction]:
        """One pipeline request per image, all at once: the model's batcher stacks them."""
        async def one(i: int, data: bytes) -> Prediction:
            try:
                return await self.pipeline.run(model, EncodedImage(data), options, deadline_s)
            except InvalidInput as exc:
                raise InvalidInput(f"image {i} of {len(images)}: {exc}") from exc

        if len(images) == 1:
            return [await one(0, images[0])]
        return list(await asyncio.gather(*(one(i, d) for i, d in enumerate(images))))

    def _count(self, name: str, total_ns: int, predictions: Optional[list[Prediction]], rows: int) -> None:
        with self._stats_lock:
            s = self._stats.setdefault(name, _ModelStats())
            s.last_inference_ms = int(time.time() * 1000)
            if predictions is None:
                s.fail.add(total_ns)
                return
            s.success.add(total_ns)
            s.inference_count += rows
            for p in predictions:
                t = p.timing
                s.execution_count += 1
                s.queue.add(t.queue_us * 1000)
                s.compute_input.add(t.preprocess_us * 1000)
                s.compute_infer.add(t.inference_us * 1000)
                s.compute_output.add(t.postprocess_us * 1000)
                b = s.batches.setdefault(t.batch_size, _Duration())
                b.add(t.inference_us * 1000)

    async def ModelInfer(self, request, context):
        try:
            if self.rate_limiter is not None:
                self.rate_limiter.take(context.peer())
            return await self._infer(request, context.time_remaining)
        except Exception as exc:  # noqa: BLE001 - every error becomes a status, never a crash
            await abort_with(context, exc)

    async def ModelStreamInfer(self, request_iterator, context) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Triton's streaming extension: answers in request order, up to `stream_window` in flight;
        a failed request answers its error in error_message and the stream goes on."""
        pending: asyncio.Queue = asyncio.Queue(maxsize=self.stream_window)
        peer = context.peer()

        async def one(request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
            try:
                if self.rate_limiter is not None:
                    self.rate_limiter.take(peer)
                return pb.ModelStreamInferResponse(infer_response=await self._infer(request))
            except Exception as exc:  # noqa: BLE001 - one bad request never breaks the stream
                return pb.ModelStreamInferResponse(error_message=status_of(exc)[1])

        async def reader() -> None:
            try:
                async for request in request_iterator:
                    await pending.put(asyncio.ensure_future(one(request)))
            finally:
                await pending.put(None)

        reader_task = asyncio.ensure_future(reader())
        try:
            while True:
                item = await pending.get()
                if item is None:
                    break
                yield await item
            await reader_task
        finally:
            if not reader_task.done():
                reader_task.cancel()
            while not pending.empty():
                item = pending.get_nowait()
                if item is not None:
                    item.cancel()

    # -- statistics ----------------------------------------------------------------
    @translate_errors
    async def ModelStatistics(self, request, context):
        models = [self._model(request.name, request.version)] if request.name else list(self.registry)
        msg = pb.ModelStatisticsResponse()
        with self._stats_lock:
            for model in models:
                s = self._stats.get(model.name, _ModelStats())
                m = msg.model_stats.add(name=model.name, version=model.cfg.version,
                                        last_inference=s.last_inference_ms, inference_count=s.inference_count,
                                        execution_count=s.execution_count)
                st = m.inference_stats
                for key in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
                    d = getattr(s, key)
                    getattr(st, key).count, getattr(st, key).ns = d.count, d.ns
                for size, d in sorted(s.batches.items()):
                    b = m.batch_stats.add(batch_size=size)
                    b.compute_infer.count, b.compute_infer.ns = d.count, d.ns
        return msg

    # -- model repository ------------------------------------------------------------
    @translate_errors
    async def RepositoryIndex(self, request, context):
        msg = pb.RepositoryIndexResponse()
        for model in self.registry:
            if model.unloaded:
                state, reason = "UNAVAILABLE", "unloaded"
            else:
                state = {ModelState.READY: "READY", ModelState.LOADING: "LOADING"}.get(model.state, "UNAVAILABLE")
                reason = "" if state == "READY" else model.state_reason
            if request.ready and state != "READY":
                continue
            msg.models.add(name=model.name, version=model.cfg.version, state=state, reason=reason)
        return msg

    @translate_errors
    async def RepositoryModelLoad(self, request, context):
        """Loads the model again from the configuration (blocking, as Triton); a ready model stays."""
        model = self._model(request.model_name)
        if request.parameters:
            raise InvalidInput(f"RepositoryModelLoad parameters ({sorted(request.parameters)}) are not supported: "
                               f"models come from the daemon's configuration")
        lock = self._reload_locks.setdefault(model.name, asyncio.Lock())
        async with lock:
            if model.state is not ModelState.READY or model.runner is None:
                log.info("model %s: loading on request (RepositoryModelLoad)", model.name)
                await asyncio.get_running_loop().run_in_executor(None, model.bring_up)
        if model.state is not ModelState.READY:
            raise ModelNotReady(f"failed to load '{model.name}': {model.state_reason}")
        return pb.RepositoryModelLoadResponse()

    @translate_errors
    async def RepositoryModelUnload(self, request, context):
        model = self._model(request.model_name)
        lock = self._reload_locks.setdefault(model.name, asyncio.Lock())
        async with lock:
            if not model.unloaded:
                log.info("model %s: unloading on request (RepositoryModelUnload)", model.name)
                await asyncio.get_running_loop().run_in_executor(None, model.take_down, UNLOADED)
        return pb.RepositoryModelUnloadResponse()


def add_to_server(servicer: KServeServicer, server) -> None:
    """Serve `servicer` as inference.GRPCInferenceService, every method through the generic handler.
    ModelInfer is not registered with gRPC's core: each registered method costs every call of
    the server, edgeinfer.v1's Infer included (rpc/methods.py), and the edgeinfer.v1 path is
    the one tuned for tiny models."""
    def unary(method, request_type, response_type):
        return grpc.unary_unary_rpc_method_handler(method, request_deserializer=request_type.FromString,
                                                   response_serializer=response_type.SerializeToString)

    handlers = {
        "ServerLive": unary(servicer.ServerLive, pb.ServerLiveRequest, pb.ServerLiveResponse),
        "ServerReady": unary(servicer.ServerReady, pb.ServerReadyRequest, pb.ServerReadyResponse),
        "ModelReady": unary(servicer.ModelReady, pb.ModelReadyRequest, pb.ModelReadyResponse),
        "ServerMetadata": unary(servicer.ServerMetadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
        "ModelMetadata": unary(servicer.ModelMetadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
        "ModelInfer": unary(servicer.ModelInfer, pb.ModelInferRequest, pb.ModelInferResponse),
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
            servicer.ModelStreamInfer, request_deserializer=pb.ModelInferRequest.FromString,
            response_serializer=pb.ModelStreamInferResponse.SerializeToString),
        "ModelConfig": unary(servicer.ModelConfig, pb.ModelConfigRequest, pb.ModelConfigResponse),
        "ModelStatistics": unary(servicer.ModelStatistics, pb.ModelStatisticsRequest, pb.ModelStatisticsResponse),
        "RepositoryIndex": unary(servicer.RepositoryIndex, pb.RepositoryIndexRequest, pb.RepositoryIndexResponse),
        "RepositoryModelLoad": unary(servicer.RepositoryModelLoad, pb.RepositoryModelLoadRequest,
                                     pb.RepositoryModelLoadResponse),
        "RepositoryModelUnload": unary(servicer.RepositoryModelUnload, pb.RepositoryModelUnloadRequest,
                                       pb.RepositoryModelUnloadResponse),
    }
    add_service(server, SERVICE_NAME, handlers)
