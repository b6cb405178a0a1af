"""Plain dataclasses the client returns: no protobuf leaks out of the library."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
import numpy as np

from edgeinfer_proto.tensors import from_tensor
from edgeinfer_proto.edgeinfer.v1 import admin_pb2
from edgeinfer_proto.edgeinfer.v1 import inference_pb2 as pb


@dataclass
class ClassScore:
    index: int
    label: str
    score: float


@dataclass
class Detection:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the sent image's pixels
    score: float
    label: str = ""
    class_index: int = 0
    landmarks: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class InferResult:
    model: str
    model_version: str = ""
    request_id: str = ""
    classes: list[ClassScore] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    timing_us: dict[str, int] = field(default_factory=dict)
    image_size: tuple[int, int] = (0, 0)
    backend: str = ""
    precision: str = ""
    batch_size: int = 1  # rows of the server's runner call this request ran in

    def to_dict(self) -> dict:
        """The JSON shape `edgeinfer-client infer --json` prints: the whole result (raw output tensors
        as dtype and shape; their values are for the library)."""
        return {
            "model": self.model,
            "model_version": self.model_version,
            "request_id": self.request_id,
            "backend": self.backend,
            "precision": self.precision,
            "image_size": list(self.image_size),
            "classes": [{"index": c.index, "label": c.label, "score": c.score} for c in self.classes],
            "detections": [{"box": [round(v, 2) for v in d.box], "score": d.score, "label": d.label,
                            "class_index": d.class_index,
                            "landmarks": [[round(x, 2), round(y, 2)] for x, y in d.landmarks]}
                           for d in self.detections],
            "outputs": {name: {"dtype": str(a.dtype), "shape": list(a.shape)} for name, a in self.outputs.items()},
            "timing_us": dict(self.timing_us),
            "batch_size": self.batch_size,
        }


@dataclass
class StreamError:
    """The error of one frame in a stream (the stream itself goes on)."""

    request_id: str
    sequence: int
    code: str
    message: str


@dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: list[int]


@dataclass
class Attempt:
    backend: str
    precision: str
    outcome: str
    reason: str


@dataclass
class Accuracy:
    precision: str
    metrics: dict[str, float]
    gate_metric: str
    threshold: float
    passed: bool
    samples: int


@dataclass
class ModelInfo:
    name: str
    version: str
    state: str  # "loading", "ready", "failed"
    state_reason: str
    backend: str
    precision: str
    task: str
    device: str
    max_batch: int
    labels_count: int
    inputs: list[TensorInfo] = field(default_factory=list)
    outputs: list[TensorInfo] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    accuracy: list[Accuracy] = field(default_factory=list)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


_STATE = {pb.MODEL_STATE_LOADING: "loading", pb.MODEL_STATE_READY: "ready", pb.MODEL_STATE_FAILED: "failed"}


def _dtype_name(code: int) -> str:
    return pb.DataType.Name(code).removeprefix("DATA_TYPE_").lower()


def result_from_proto(r: pb.InferResponse) -> InferResult:
    t = r.timing
    return InferResult(
        model=r.model, model_version=r.model_version, request_id=r.request_id,
        classes=[ClassScore(c.index, c.label, c.score) for c in r.classes],
        detections=[Detection((d.box.x1, d.box.y1, d.box.x2, d.box.y2), d.score, d.label, d.class_index,
                              [(p.x, p.y) for p in d.landmarks]) for d in r.detections],
        outputs={o.name: from_tensor(o) for o in r.outputs},
        timing_us={"queue": t.queue_us, "preprocess": t.preprocess_us, "inference": t.inference_us,
                   "postprocess": t.postprocess_us, "total": t.total_us},
        image_size=(r.image_width, r.image_height), backend=r.backend, precision=r.precision,
        batch_size=r.timing.batch_size or 1,
    )


def stream_item_from_proto(s: pb.StreamResponse):
    if s.WhichOneof("result") == "error":
        return StreamError(s.request_id, s.sequence, s.error.code, s.error.message)
    return result_from_proto(s.response)


def model_from_proto(m: pb.ModelInfo) -> ModelInfo:
    def tensors(items):
        return [TensorInfo(t.name, _dtype_name(t.dtype), list(t.shape)) for t in items]

    return ModelInfo(
        name=m.name, version=m.version, state=_STATE.get(m.state, "unknown"), state_reason=m.state_reason,
        backend=m.backend, precision=m.precision, task=m.task, device=m.device, max_batch=m.max_batch,
        labels_count=m.labels_count, inputs=tensors(m.inputs), outputs=tensors(m.outputs),
        attempts=[Attempt(a.backend, a.precision, a.outcome, a.reason) for a in m.attempts],
        accuracy=[Accuracy(a.precision, dict(a.metrics), a.gate_metric, a.threshold, a.passed, a.samples)
                  for a in m.accuracy],
    )


# -- streams (edgeinfer.v1.Streams) ----------------------------------------------------

@dataclass
class StreamInfo:
    """One stream the daemon pulls itself ([[streams]] in its config)."""

    name: str
    model: str
    source: str
    state: str            # connecting, live, stalled, reconnecting, stopped
    state_reason: str
    fps_in: float
    fps_out: float
    frames_in: int
    frames_processed: int
    frames_dropped: int   # replaced by a newer frame before inference took them
    frames_skipped: int   # left out by sampling to the stream's fps
    frames_failed: int
    reconnects: int
    last_error: str
    decode: str
    width: int
    height: int
    subscribers: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class StreamFrameResult:
    """The result of one processed frame of a stream."""

    stream: str
    frame: int            # the frame's index among those the stream captured
    timestamp: float      # capture time, Unix seconds
    result: InferResult   # classes and detections in the frame's pixels
    latency_s: float      # capture to result, measured in the daemon
    dropped: int          # results this watcher has lost so far to its full queue

    @property
    def detections(self) -> list[Detection]:
        return self.result.detections

    @property
    def classes(self) -> list[ClassScore]:
        return self.result.classes

    def to_dict(self) -> dict:
        """The JSON shape `edgeinfer-client watch --json` prints (one object per line)."""
        r = self.result.to_dict()
        return {"stream": self.stream, "frame": self.frame, "timestamp": self.timestamp,
                "image_size": list(self.result.image_size), "detections": r["detections"],
                "classes": r["classes"], "latency_ms": round(self.latency_s * 1000, 2), "dropped": self.dropped}


def stream_info_from_proto(s) -> StreamInfo:
    from edgeinfer_proto.edgeinfer.v1 import streams_pb2 as spb

    state = spb.StreamState.Name(s.state).removeprefix("STREAM_STATE_").lower()
    return StreamInfo(name=s.name, model=s.model, source=s.source, state=state, state_reason=s.state_reason,
                      fps_in=s.fps_in, fps_out=s.fps_out, frames_in=s.frames_in,
                      frames_processed=s.frames_processed, frames_dropped=s.frames_dropped,
                      frames_skipped=s.frames_skipped, frames_failed=s.frames_failed, reconnects=s.reconnects,
                      last_error=s.last_error, decode=s.decode, width=s.width, height=s.height,
                      subscribers=s.subscribers)


def stream_result_from_proto(r) -> StreamFrameResult:
    return StreamFrameResult(stream=r.stream, frame=r.frame, timestamp=r.timestamp,
                             result=result_from_proto(r.response), latency_s=r.latency_s, dropped=r.dropped)


# -- admin (edgeinfer.v1.Admin) ----------------------------------------------------------

@dataclass
class ModelChange:
    """One model's part of a reload: action is "added", "removed", "updated", "unchanged" or "failed"."""
    name: str
    action: str
    detail: str = ""
    error: str = ""


@dataclass
class ReloadResult:
    """What Admin.Reload did. accepted False: the config was refused (error says why), nothing changed."""
    accepted: bool
    error: str = ""
    config_path: str = ""
    models: list[ModelChange] = field(default_factory=list)
    needs_restart: list[str] = field(default_factory=list)
    processes: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


def reload_from_proto(r: "admin_pb2.ReloadResponse") -> ReloadResult:
    action = admin_pb2.ModelChange.Action.Name
    return ReloadResult(accepted=r.accepted, error=r.error, config_path=r.config_path,
                        models=[ModelChange(m.name, action(m.action).removeprefix("ACTION_").lower(), m.detail, m.error)
                                for m in r.models],
                        needs_restart=list(r.needs_restart), processes=r.processes)
