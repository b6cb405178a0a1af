"""Typed daemon configuration, loaded from one TOML file and validated once.

Every error names the file, the table and the key, and says what was
expected: ``configs/dev.toml: [models.faces.input] size: expected a list of
2 positive integers [width, height], got [640]``. Unknown keys are errors, so
a typo never silently falls back to a default.

The object built here is passed through constructors; nothing reads the
file or the environment again.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 (JetPack 6)
    import tomli as tomllib

from edgeinfer.errors import ConfigError
from edgeinfer.listen import parse_listen

BACKEND_NAMES = ("tensorrt", "onnxruntime")
PRECISIONS = ("fp32", "fp16", "int8")
TASKS = ("classification", "centerface", "yolov8", "raw")
# Per task: the accuracy gate's figure and the [models.calibration] key holding its threshold
# (model/precision/gate.py applies them; the benchmark's report shows them).
ACCURACY_GATES: dict[str, tuple[str, str]] = {
    "classification": ("top1_agreement", "min_top1_agreement"),
    "centerface": ("mean_iou", "min_mean_iou"),
    "yolov8": ("mean_iou", "min_mean_iou"),
    "raw": ("cosine_min", "min_cosine"),
}


def _default_cache_dir() -> str:
    # systemd sets CACHE_DIRECTORY (CacheDirectory=edgeinfer); elsewhere use XDG.
    if os.environ.get("CACHE_DIRECTORY"):
        return os.environ["CACHE_DIRECTORY"].split(":")[0]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "edgeinfer")


# --------------------------------------------------------------------------
# Schema. Field metadata "check" holds (predicate, expectation text).
# --------------------------------------------------------------------------

def _check(pred, expected: str):
    return {"check": (pred, expected)}


_positive = _check(lambda v: v > 0, "a positive number")
_non_negative = _check(lambda v: v >= 0, "a number >= 0")
_unit = _check(lambda v: 0.0 <= v <= 1.0, "a number between 0 and 1")


@dataclass
class ServerConfig:
    # host:port to listen on; "unix:/run/edgeinfer/edgeinfer.sock" also works.
    listen: str = "127.0.0.1:50051"
    # Daemon processes sharing the port (SO_REUSEPORT; TCP only), each with its
    # own models, workers and GIL; one supervisor talks to systemd. Raises the
    # ceiling one Python process puts on a fast GPU (measured on an H200,
    # ResNet-50: one process tops out near 1,300 img/s, GIL-bound at ~4 cores).
    # The kernel spreads connections, not requests: a client on one channel
    # stays with one process. Metrics: process i serves on the metrics port + i.
    processes: int = field(default=1, metadata=_positive)
    # "per-process": every process loads and runs its own copy of each model.
    # "shared": one more process loads each model once and runs the batches of
    # all `processes` front-ends (gRPC, decode, preprocessing, batching,
    # postprocessing), merged; tensors cross over shared memory
    # (edgeinfer/serving/shared). One CUDA context and bigger batches on a GPU;
    # the inference process serves metrics on the metrics port + processes.
    inference: Literal["per-process", "shared"] = "per-process"
    # Threads doing decode/preprocess/inference/postprocess off the event loop.
    workers: int = field(default=4, metadata=_positive)
    max_message_bytes: int = field(default=32 * 1024 * 1024, metadata=_positive)
    # Images larger than this (width x height, read from the header before any
    # pixel is allocated) are refused with INVALID_ARGUMENT.
    max_image_pixels: int = field(default=40_000_000, metadata=_positive)
    max_image_bytes: int = field(default=20 * 1024 * 1024, metadata=_positive)
    # In-flight frames per InferStream call before the server stops reading.
    stream_window: int = field(default=16, metadata=_positive)
    # Seconds given to in-flight calls on shutdown before they are cancelled.
    grace_period_s: float = field(default=10.0, metadata=_non_negative)
    reflection: bool = True
    # "auto" = uvloop when installed (measured on 2 cores: +13..48% unary
    # req/s where the transport bounds, neutral on image models), else asyncio.
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    # Tensor requests to an unbatched model whose batch-1 inference took less
    # than this at warm-up run on the event loop thread itself: the hop to a
    # worker and back costs more than such a model (measured on 2 cores: about
    # 1.5x req/s on a trivial model). Image requests always go to the workers
    # (decoding takes milliseconds). 0 = never.
    inline_max_us: int = field(default=250, metadata=_non_negative)
    # How this process's threads wait for the GPU (every CUDA synchronize:
    # ONNX Runtime's at the end of a run, TensorRT's, our copies'), applied
    # before its first model loads on a machine with a CUDA device.
    # "auto": CUDA's heuristic, which spins a core for the whole wait unless the
    # process has more CUDA contexts than the machine has cores; "spin";
    # "yield" (spins, yielding to other threads); "block" (sleeps until the GPU
    # is done: the core is free for decoding and gRPC meanwhile, at the cost
    # of a thread wake-up per wait).
    cuda_sync: Literal["auto", "spin", "yield", "block"] = "auto"
    # When the daemon tells systemd READY=1 (Type=notify): "listening" = the
    # port is bound (models still loading answer UNAVAILABLE); "all-models" =
    # every model is ready (a model that fails never lets the unit start:
    # systemd's start timeout fails it); "any-model" = one model is ready.
    ready: Literal["listening", "all-models", "any-model"] = "listening"
    # The systemd watchdog is fed only while inference makes progress: a
    # request or batch running on a model for longer than this many seconds
    # (a hung GPU call, a deadlocked runner), or requests waiting this long
    # while no call starts or finishes, stop the pings, so systemd restarts
    # the daemon. A long queue that keeps moving never does.
    watchdog_stall_s: float = field(default=60.0, metadata=_positive)
    # GPU index (within CUDA_VISIBLE_DEVICES) for every model without its own
    # `device`: TensorRT, ONNX Runtime's CUDA EP and edgeinfer's CUDA buffers.
    # The environment variable EDGEINFER_DEVICE overrides it (the systemd
    # template edgeinfer@N sets it).
    device: int = field(default=0, metadata=_non_negative)

    @property
    def supervised(self) -> bool:
        """Served by a supervisor and child processes (process/supervisor.py), not by one Daemon."""
        return self.processes > 1 or self.inference == "shared"


@dataclass
class MetricsConfig:
    enabled: bool = True
    listen: str = "127.0.0.1:9400"


@dataclass
class CacheConfig:
    # Engine cache and timing caches. Under systemd: /var/cache/edgeinfer.
    dir: str = field(default_factory=_default_cache_dir)


@dataclass
class InputConfig:
    # Name of the image input; empty = the model's first input.
    tensor: str = ""
    # Channel order the model expects.
    color: Literal["rgb", "bgr", "gray"] = "rgb"
    resize: Literal["stretch", "letterbox", "center-crop"] = "stretch"
    # [width, height] of the model input.
    size: list[int] = field(default_factory=lambda: [224, 224], metadata=_check(
        lambda v: len(v) == 2 and all(x > 0 for x in v), "a list of 2 positive integers [width, height]"))
    # center-crop: the crop covers this fraction of the resized shorter side
    # (0.875 = the classic resize-256/crop-224 ImageNet recipe).
    crop_fraction: float = field(default=0.875, metadata=_check(lambda v: 0 < v <= 1, "a number in (0, 1]"))
    # Padding value for letterbox (0-255).
    pad_value: int = field(default=114, metadata=_check(lambda v: 0 <= v <= 255, "an integer 0..255"))
    # Per pixel: ((value * scale) - mean[c]) / std[c], on 0..255 values.
    scale: float = field(default=1.0, metadata=_positive)
    mean: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0], metadata=_check(
        lambda v: all(x != 0 for x in v), "a list of non-zero numbers"))
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    dtype: Literal["float32", "float16", "uint8"] = "float32"
    # Where uint8 -> normalized float (and HWC -> CHW, BGR -> RGB) happens: "cpu" (numpy, on the
    # workers) or "gpu" (edgeinfer's NVRTC kernel into device memory, fed to ONNX Runtime's CUDA EP
    # by IO binding; needs float32 NCHW and cuda-python). Decode and resize stay on the CPU. Where
    # "gpu" cannot run (CPU provider, TensorRT, no cuda-python) the CPU does it and the model's
    # details say why.
    normalize_on: Literal["cpu", "gpu"] = "cpu"
    # JPEGs at least 2x larger than the model input (after the resize this table asks for)
    # are decoded at 1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling, never below the size
    # the resize needs: far less decode work for camera-size photos (a 1920x1080 frame into
    # a 640x480 letterbox decodes at 960x540). Pixels differ slightly from a full decode
    # resized (libjpeg's scaled IDCT averages blocks); boxes map back to the original
    # pixels exactly. false: always decode at full size.
    reduced_decode: bool = True
    # Where JPEG/PNG requests are decoded and resized: "cpu" (OpenCV on the workers), "gpu"
    # (nvImageCodec decodes each batch into GPU memory, an NVRTC kernel resizes and normalizes
    # it into the model's input there; needs ONNX Runtime's CUDA provider, float32 NCHW input,
    # rgb or bgr, and the nvidia-nvimgcodec wheel) or "auto" (gpu where it can run, quietly cpu
    # elsewhere). Where "gpu" cannot run, the CPU serves and the model's state says why.
    # Default cpu: the CPU path is the accuracy gate's reference and bit-exact across hosts;
    # the GPU decode differs by a level or two on some pixels (docs/gpu.md).
    decode: Literal["cpu", "gpu", "auto"] = "cpu"


@dataclass
class PostprocessConfig:
    task: Literal["classification", "centerface", "yolov8", "raw"] = "raw"
    # Classification / detection labels: .txt (one per line) or .json
    # (list, or object index -> name). Relative to the config file.
    labels: str = ""
    top_k: int = field(default=5, metadata=_positive)
    # Default: 0.5 for detectors, 0 (no cut) for classification.
    score_threshold: Optional[float] = field(default=None, metadata=_unit)
    nms_iou_threshold: float = field(default=0.45, metadata=_unit)
    max_detections: int = field(default=100, metadata=_positive)
    # Classification: apply softmax to logits (false when the model already does).
    softmax: bool = True


@dataclass
class ProfileConfig:
    """One TensorRT optimization profile: shapes per dynamic input."""
    min: dict[str, list[int]] = field(default_factory=dict)
    opt: dict[str, list[int]] = field(default_factory=dict)
    max: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class TensorRTConfig:
    workspace_mb: int = field(default=1024, metadata=_positive)
    # Builder optimization level 0..5 (TensorRT default 3).
    optimization_level: int = field(default=3, metadata=_check(lambda v: 0 <= v <= 5, "an integer 0..5"))
    # Jetson DLA core (-1 = GPU only); layers DLA cannot run fall back to the GPU.
    dla_core: int = field(default=-1, metadata=_check(lambda v: v >= -1, "an integer >= -1"))
    # "none", "ampere+" or "same-compute-capability" (TensorRT >= 10).
    hardware_compatibility: Literal["none", "ampere+", "same-compute-capability"] = "none"
    # TensorRT-RTX: ahead-of-time target ("current", "sm75", "sm86", "sm89", "sm120").
    rtx_compute_capability: str = "current"
    # Execution contexts (each with its own stream) for parallel batches.
    instances: int = field(default=2, metadata=_positive)
    profiles: list[ProfileConfig] = field(default_factory=list)


@dataclass
class OnnxRuntimeConfig:
    # Execution providers in order; empty = CUDA when available, then CPU.
    providers: list[str] = field(default_factory=list)
    # 0: ORT's default (a thread pinned to each physical core), or one per CPU of
    # the process's mask where taskset/CPUAffinity= narrows it (loader.intra_op_threads).
    intra_op_threads: int = field(default=0, metadata=_non_negative)
    inter_op_threads: int = field(default=0, metadata=_non_negative)
    # false: ORT's intra-op threads sleep between parallel sections instead of
    # spinning for work (ORT's default). With concurrent requests on a small CPU
    # the spinning takes cores from the other requests: EfficientNet-Lite0 at c=8
    # on 2 cores, +7% img/s through the daemon; a lone request then waits for its
    # threads to wake: c=1 -23% img/s (8 interleaved rounds, docs/decisions.md).
    intra_op_spinning: bool = True
    # Concurrent Run() calls allowed on one session.
    instances: int = field(default=2, metadata=_positive)
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    # CUDA EP: how cuDNN picks a convolution algorithm for each new input shape.
    # "exhaustive" (ORT's default) times every algorithm; "heuristic" asks
    # cuDNN's heuristics; "default" pins one algorithm. "auto" = ORT's default.
    cudnn_conv_algo_search: Literal["auto", "exhaustive", "heuristic", "default"] = "auto"
    # One session per batch size the batcher runs (its buckets), so each
    # session only ever sees one input shape. On the CUDA EP a session whose
    # input shape differs from its previous call re-plans every convolution:
    # measured on an H200 (ResNet-50, ORT 1.31), alternating batch 8 and 16
    # cost 80 ms per call against 7 ms at a fixed 16, whatever the algorithm
    # search mode. Costs one copy of the weights per size in GPU memory.
    # "auto" = on for the CUDA EP when batching pads to buckets.
    session_per_batch_size: Literal["auto", "on", "off"] = "auto"


@dataclass
class CalibrationConfig:
    """INT8 calibration and the accuracy gate for reduced precisions."""
    # Folder of representative images (relative to the config file) used to
    # calibrate INT8. Also accepts a video file (frames are sampled).
    images: str = ""
    max_images: int = field(default=64, metadata=_positive)
    # Validation images for the accuracy gate; empty = the calibration set.
    validation: str = ""
    # Gate thresholds, per task: classification top-1 agreement, detection
    # mean matched-box IoU, raw cosine similarity.
    min_top1_agreement: float = field(default=0.9, metadata=_unit)
    min_mean_iou: float = field(default=0.9, metadata=_unit)
    min_cosine: float = field(default=0.99, metadata=_unit)


@dataclass
class BatchingConfig:
    # 1 = no batching. Bounded by the engine's largest profile.
    max_batch: int = field(default=1, metadata=_positive)
    # How long the first request of a batch may wait for others.
    max_queue_delay_us: int = field(default=2000, metadata=_non_negative)
    preferred_batch_sizes: list[int] = field(default_factory=list)
    # Requests waiting beyond this get RESOURCE_EXHAUSTED.
    max_queue: int = field(default=256, metadata=_positive)
    # Run only a few batch sizes (preferred sizes, powers of two, max_batch),
    # padding the rest. "auto" = on for ONNX Runtime on a GPU, where every new
    # batch size costs (measured on an H200: ~340 ms per call at sizes 3, 5, 7..
    # vs ~28 ms at 16); off on CPU, where padding is only extra work.
    pad_to_buckets: Literal["auto", "on", "off"] = "auto"
    # The sizes to pad to when padding is on; empty = the preferred sizes, the
    # powers of two and max_batch. E.g. [max_batch] runs one shape only. Padded
    # rows cost GPU time under load: with the shared inference process (merged
    # batches of any size) [2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 16, 32] served
    # ResNet-50 at 0.05-0.15 more of the in-process ceiling than the powers of two
    # on an H200, at one ONNX Runtime session per size and instance.
    buckets: list[int] = field(default_factory=list)
    # [server] inference = "shared" only: how long a free slot of the inference process
    # may wait, from the oldest waiting front-end batch's arrival, for the merged rows to
    # reach the smallest preferred batch size (max_batch without preferred sizes).
    # 0 = take what is waiting at once. Measured on an H200 (ResNet-50, 4 front-ends,
    # preferred size 8): 1,000 us served 2-4% more than 0 in each of 3 same-call
    # comparisons, 2,000 us less (docs/decisions.md).
    merge_delay_us: int = field(default=0, metadata=_non_negative)
    # [server] inference = "shared" only: how many calls of this model a front-end keeps
    # in flight to the inference process (its batcher's slots). 0 = 2 per inference slot,
    # so front-ends batch first and the host merges their batches. With many (e.g. 16) and
    # max_queue_delay_us = 0, each request goes to the inference process once
    # preprocessed and merge_delay_us does all the batching, in one stage.
    shared_calls_in_flight: int = field(default=0, metadata=_non_negative)


@dataclass
class ModelConfig:
    name: str
    onnx: str
    version: str = "1"
    # Ordered backend preference, or "auto" (tensorrt, then onnxruntime).
    backends: Union[list[str], str] = "auto"
    # Ordered precision preference; the first that loads and passes the gate serves.
    precision: list[str] = field(default_factory=lambda: ["fp32"])
    warmup_runs: int = field(default=2, metadata=_non_negative)
    input: InputConfig = field(default_factory=InputConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    tensorrt: TensorRTConfig = field(default_factory=TensorRTConfig)
    onnxruntime: OnnxRuntimeConfig = field(default_factory=OnnxRuntimeConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    # GPU index this model runs on; unset = [server] device.
    device: Optional[int] = field(default=None, metadata=_non_negative)

    @property
    def backend_order(self) -> list[str]:
        if self.backends == "auto":
            return list(BACKEND_NAMES)
        return list(self.backends)


ROLES = ("infer", "admin")
_roles_check = _check(lambda v: len(v) > 0 and all(r in ROLES for r in v), f"a non-empty list from {list(ROLES)}")


@dataclass
class TlsConfig:
    """Transport security of the gRPC port (docs/security.md). Files are read at start and on reload."""
    # PEM server certificate (chain) and private key; both empty = plain text.
    cert: str = ""
    key: str = ""
    # PEM bundle of the CA(s) whose client certificates are accepted (mutual TLS).
    client_ca: str = ""
    # true: a client without a certificate signed by client_ca is refused in the handshake.
    require_client_cert: bool = False
    # Client certificate common name -> roles it grants (e.g. {"kiosk-12" = ["infer"]}); needs
    # require_client_cert. Any entry turns role checks on, as [[auth.tokens]] do.
    subject_roles: dict[str, list[str]] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return bool(self.cert)


@dataclass
class TokenConfig:
    """One bearer token (metadata `authorization: Bearer <token>`), stored as its SHA-256."""
    # Who holds it, for logs.
    name: str
    # Hex SHA-256 of the token (`edgeinfer token` makes one).
    sha256: str = field(metadata=_check(lambda v: len(v) == 64 and all(c in "0123456789abcdef" for c in v.lower()),
                                        "64 hex digits (the token's SHA-256)"))
    roles: list[str] = field(default_factory=lambda: ["infer"], metadata=_roles_check)


@dataclass
class AuthConfig:
    """Who may call what (docs/security.md). With no tokens and no tls.subject_roles every caller
    that gets through the transport may call everything."""
    tokens: list[TokenConfig] = field(default_factory=list)
    # grpc.health.v1 and server reflection answer without credentials.
    open_health: bool = True
    open_reflection: bool = True


@dataclass
class LimitsConfig:
    """Per-request and per-client bounds (docs/security.md); each answers its own status."""
    # Sum of the tensor bytes of one request (INVALID_ARGUMENT above it).
    max_tensor_bytes: int = field(default=64 * 1024 * 1024, metadata=_positive)
    # Rows (first dimension) of one tensor request (INVALID_ARGUMENT above it).
    max_batch_rows: int = field(default=64, metadata=_positive)
    # Concurrent InferStream calls from one connection (RESOURCE_EXHAUSTED above it). gRPC Python
    # clients in one process share a connection per target, so one process's streams count together.
    max_streams_per_connection: int = field(default=64, metadata=_positive)
    # Requests a second per client address (stream frames count); 0 = no limit.
    # Above it: RESOURCE_EXHAUSTED. `rate_burst` requests may come at once.
    rate_per_client: float = field(default=0.0, metadata=_non_negative)
    rate_burst: int = field(default=50, metadata=_positive)
    # Longest time a request may wait or run, whatever deadline the client sets (or none); 0 = no cap.
    max_deadline_s: float = field(default=60.0, metadata=_non_negative)
    # ONNX Runtime runs whose inputs exceed this many bytes, or whose non-batch shapes differ from
    # the warm-up's, give the CPU arena back afterwards (memory.enable_memory_arena_shrinkage): a
    # batch-40 EfficientNet request otherwise keeps ~380 MB for the life of the process. 0 = never.
    arena_shrink_bytes: int = field(default=16 * 1024 * 1024, metadata=_non_negative)
    # Errors a client causes (bad input, malformed messages) are logged at most once per
    # this many seconds per kind, with a count of the ones left out.
    client_error_log_interval_s: float = field(default=10.0, metadata=_non_negative)


@dataclass
class StreamConfig:
    """One video source the daemon pulls itself ([[streams]]; edgeinfer/streams)."""
    name: str
    # A video file (relative to the config file), an rtsp://, rtsp(s)://, http(s):// URL,
    # a V4L2 device (/dev/videoN), or a GStreamer pipeline (contains "!") where OpenCV has GStreamer.
    source: str
    # The configured model that every sampled frame goes to.
    model: str
    # Frames per second sent to the model; the newest frame is taken at this rate. 0 = every
    # frame the source delivers (as the model keeps up).
    fps: float = field(default=5.0, metadata=_non_negative)
    # Files: start again at the end (true), or end the stream (false: state "stopped").
    loop: bool = True
    rtsp_transport: Literal["tcp", "udp"] = "tcp"
    # No frame for this long: the source is stalled and is reopened. Also the limit for
    # opening the source and for one read.
    stall_timeout_s: float = field(default=5.0, metadata=_positive)
    # Reconnect backoff: 0.5 s doubling, with jitter, up to this.
    reconnect_max_s: float = field(default=30.0, metadata=_positive)
    # Reconnect attempts in a row before the stream stops; 0 = forever.
    max_reconnects: int = field(default=0, metadata=_non_negative)
    # "cpu": FFmpeg through OpenCV. "gpu": NVDEC through PyNvVideoCodec (falls back to "cpu"
    # with the reason in the stream's state where it cannot run). "auto": gpu where it can.
    decode: Literal["cpu", "gpu", "auto"] = "cpu"
    # Frames of this stream in inference at once. 1: the next frame is taken when a result
    # comes back, so a stream's rate is at most 1 / (capture-to-result latency). More lets
    # a GPU model's batches fill while earlier frames compute; results still go out in frame
    # order. On a CPU more only queues.
    in_flight: int = field(default=1, metadata=_positive)
    # V4L2 devices: capture size, and the pixel format as a FOURCC ("MJPG", "YUYV"); 0/"" = the driver's.
    width: int = field(default=0, metadata=_non_negative)
    height: int = field(default=0, metadata=_non_negative)
    fourcc: str = field(default="", metadata=_check(lambda v: len(v) in (0, 4), "a 4-character code such as \"MJPG\""))


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    models: list[ModelConfig] = field(default_factory=list)
    streams: list[StreamConfig] = field(default_factory=list)
    # File the config came from (for messages) and its folder (for relative paths).
    source: str = "<memory>"

    @property
    def roles_checked(self) -> bool:
        """Role checks are on once a token or a certificate subject is configured (rpc/auth.py)."""
        return bool(self.auth.tokens) or bool(self.tls.subject_roles)

    def model(self, name: str) -> ModelConfig:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)


# --------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------

class _Ctx:
    def __init__(self, source: str):
        self.source = source

    def fail(self, table: str, key: str, message: str) -> ConfigError:
        where = f"[{table}] " if table else ""
        return ConfigError(f"{self.source}: {where}{key}: {message}")


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list,):
        (inner,) = typing.get_args(tp) or (Any,)
        plural = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}
        return f"a list of {plural.get(inner, 'tables' if dataclasses.is_dataclass(inner) else 'values')}"
    if origin is dict:
        return "a table"
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _convert(ctx: _Ctx, table: str, key: str, tp, value):
    """Convert a TOML value to the annotated type or raise a ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ctx.fail(table, key, f"expected a table, got {value!r}")
        sub = f"{table}.{key}" if table else key
        return _build(ctx, sub, tp, value)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ctx.fail(table, key, f"expected {_type_name(tp)}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for alt in typing.get_args(tp):
            if alt is type(None):
                if value is None:
                    return None
                continue
            try:
                return _convert(ctx, table, key, alt, value)
            except ConfigError as exc:
                errors.append(exc)
        raise ctx.fail(table, key, f"expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ctx.fail(table, key, f"expected {_type_name(tp)}, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [_convert(ctx, table, f"{key}[{i}]", inner, v) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ctx.fail(table, key, f"expected a table, got {value!r}")
        _, vt = typing.get_args(tp)
        return {k: _convert(ctx, table, f"{key}.{k}", vt, v) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ctx.fail(table, key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ctx.fail(table, key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ctx.fail(table, key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ctx.fail(table, key, f"expected a string, got {value!r}")
        return value
    raise ctx.fail(table, key, f"unsupported type {tp}")  # pragma: no cover


def _build(ctx: _Ctx, table: str, cls, data: dict):
    hints = typing.get_type_hints(cls)
    # Config.source records the file a config came from; it is no key ([[streams]] source is).
    fields = {f.name: f for f in dataclasses.fields(cls) if not (cls is Config and f.name == "source")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ctx.fail(table, unknown[0],
                       f"unknown key (expected one of: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ctx.fail(table, name, f"missing required key ({_type_name(hints[name])})")
            continue
        value = _convert(ctx, table, name, hints[name], data[name])
        check = f.metadata.get("check")
        if check is not None:
            pred, expected = check
            values = value if isinstance(value, list) and "list" not in expected else [value]
            try:
                ok = all(pred(v) for v in values)
            except Exception:  # noqa: BLE001 - a predicate on a malformed value is a failed check
                ok = False
            if not ok:
                raise ctx.fail(table, name, f"expected {expected}, got {data[name]!r}")
        kwargs[name] = value
    return cls(**kwargs)


def _validate_model(ctx: _Ctx, m: ModelConfig, base: Path) -> None:
    table = f"models.{m.name}"
    if not m.name or not all(c.isalnum() or c in "-_." for c in m.name):
        raise ctx.fail("models", "name", f"expected letters, digits, '-', '_' or '.', got {m.name!r}")
    if isinstance(m.backends, str) and m.backends != "auto":
        raise ctx.fail(table, "backends", f"expected \"auto\" or a list from {list(BACKEND_NAMES)}, got {m.backends!r}")
    if isinstance(m.backends, list):
        if not m.backends:
            raise ctx.fail(table, "backends", "expected at least one backend")
        for b in m.backends:
            if b not in BACKEND_NAMES:
                raise ctx.fail(table, "backends", f"unknown backend {b!r} (expected one of {list(BACKEND_NAMES)})")
    if not m.precision:
        raise ctx.fail(table, "precision", "expected at least one of " + ", ".join(PRECISIONS))
    for p in m.precision:
        if p not in PRECISIONS:
            raise ctx.fail(table, "precision", f"unknown precision {p!r} (expected one of {list(PRECISIONS)})")
    if len(set(m.precision)) != len(m.precision):
        raise ctx.fail(table, "precision", f"lists a precision twice: {m.precision}")
    if "int8" in m.precision and not m.calibration.images:
        raise ctx.fail(f"{table}.calibration", "images",
                       "INT8 needs representative images: set a folder of images or a video file")
    if "fp16" in m.precision and not (m.calibration.images or m.calibration.validation):
        # Caught here rather than at load time: the accuracy gate needs samples.
        raise ctx.fail(f"{table}.calibration", "validation",
                       "FP16 is gated against FP32 and needs validation images: set validation or images")
    if m.input.normalize_on == "gpu" and (m.input.layout, m.input.dtype) != ("NCHW", "float32"):
        raise ctx.fail(f"{table}.input", "normalize_on", "the GPU kernel writes float32 NCHW; this input is "
                       f"{m.input.dtype} {m.input.layout}: use \"cpu\"")
    channels = 1 if m.input.color == "gray" else 3
    for key in ("mean", "std"):
        if len(getattr(m.input, key)) not in (1, channels):
            raise ctx.fail(f"{table}.input", key, f"expected 1 or {channels} values, got {getattr(m.input, key)}")
    if m.postprocess.task == "classification" and m.postprocess.top_k < 1:
        raise ctx.fail(f"{table}.postprocess", "top_k", "expected a positive integer")
    b = m.batching
    for key in ("preferred_batch_sizes", "buckets"):
        for s in getattr(b, key):
            if not 1 <= s <= b.max_batch:
                raise ctx.fail(f"{table}.batching", key,
                               f"expected sizes between 1 and max_batch ({b.max_batch}), got {s}")
    for i, prof in enumerate(m.tensorrt.profiles):
        names = set(prof.min) | set(prof.opt) | set(prof.max)
        for n in names:
            shapes = [prof.min.get(n), prof.opt.get(n), prof.max.get(n)]
            if any(s is None for s in shapes):
                raise ctx.fail(f"{table}.tensorrt.profiles[{i}]", n, "needs min, opt and max shapes")
            if len({len(s) for s in shapes}) != 1:
                raise ctx.fail(f"{table}.tensorrt.profiles[{i}]", n, f"min/opt/max have different ranks: {shapes}")
            if not all(a <= o <= x for a, o, x in zip(*shapes)):
                raise ctx.fail(f"{table}.tensorrt.profiles[{i}]", n, f"expected min <= opt <= max in every dimension, got {shapes}")
    # Paths are relative to the config file, so a config can travel with its models.
    m.onnx = str((base / os.path.expanduser(m.onnx)).resolve())
    if m.postprocess.labels:
        m.postprocess.labels = str((base / os.path.expanduser(m.postprocess.labels)).resolve())
    for key in ("images", "validation"):
        val = getattr(m.calibration, key)
        if val:
            setattr(m.calibration, key, str((base / os.path.expanduser(val)).resolve()))


def _validate_security(ctx: _Ctx, cfg: Config, base: Path, check_files: bool) -> None:
    tls = cfg.tls
    if bool(tls.cert) != bool(tls.key):
        raise ctx.fail("tls", "key" if tls.cert else "cert", "cert and key go together: set both or neither")
    if (tls.client_ca or tls.require_client_cert or tls.subject_roles) and not tls.cert:
        raise ctx.fail("tls", "cert", "client certificates need TLS: set cert and key")
    if tls.require_client_cert and not tls.client_ca:
        raise ctx.fail("tls", "client_ca", "require_client_cert needs the CA that signs client certificates")
    if tls.subject_roles and not tls.require_client_cert:
        # gRPC Python either requires a client certificate or never asks for one.
        raise ctx.fail("tls", "subject_roles", "mapping certificate subjects needs require_client_cert = true")
    for subject, roles in tls.subject_roles.items():
        if not roles or any(r not in ROLES for r in roles):
            raise ctx.fail("tls.subject_roles", subject, f"expected a non-empty list from {list(ROLES)}, got {roles!r}")
    for key in ("cert", "key", "client_ca"):
        val = getattr(tls, key)
        if val:
            setattr(tls, key, str((base / os.path.expanduser(val)).resolve()))
            if check_files and not Path(getattr(tls, key)).is_file():
                raise ctx.fail("tls", key, f"file not found: {getattr(tls, key)}")
    names = set()
    for i, tok in enumerate(cfg.auth.tokens):
        if tok.name in names:
            raise ctx.fail(f"auth.tokens[{i}]", "name", f"{tok.name!r} is used by another token")
        names.add(tok.name)
        tok.sha256 = tok.sha256.lower()


def parse_config(data: dict, source: str = "<memory>", base_dir: Optional[Path] = None,
                 check_files: bool = True) -> Config:
    """Build a validated Config from a TOML-shaped dict.

    Raises:
        ConfigError: naming source, table and key.
    """
    ctx = _Ctx(source)
    base = Path(base_dir) if base_dir else Path.cwd()
    data = dict(data)
    models_raw = data.pop("models", [])
    streams_raw = data.pop("streams", [])
    if isinstance(models_raw, dict):
        raise ctx.fail("", "models", "expected [[models]] entries (an array of tables), got a single table")
    if not isinstance(models_raw, list):
        raise ctx.fail("", "models", f"expected [[models]] entries, got {models_raw!r}")
    cfg = _build(ctx, "", Config, data)
    cfg.source = source
    if cfg.metrics.enabled:
        try:
            parse_listen(cfg.metrics.listen)
        except ValueError:
            raise ctx.fail("metrics", "listen", f"expected host:port (e.g. 127.0.0.1:9400), "
                           f"got {cfg.metrics.listen!r}") from None
    if cfg.server.processes > 1 and cfg.server.listen.startswith("unix:"):
        raise ctx.fail("server", "processes", f"{cfg.server.processes} processes share a TCP port "
                       f"(SO_REUSEPORT); listen = {cfg.server.listen!r} is a unix socket: use host:port or 1 process")
    if cfg.server.inference == "shared" and cfg.server.listen.startswith("unix:"):
        raise ctx.fail("server", "inference", f"\"shared\" runs front-end processes on a TCP port; listen = "
                       f"{cfg.server.listen!r} is a unix socket: use host:port or inference = \"per-process\"")
    _validate_security(ctx, cfg, base, check_files)
    _apply_device_env(ctx, cfg)
    seen = set()
    for i, raw in enumerate(models_raw):
        if not isinstance(raw, dict):
            raise ctx.fail("models", f"[{i}]", "expected a table")
        label = raw.get("name") if isinstance(raw.get("name"), str) else f"#{i + 1}"
        model = _build(ctx, f"models.{label}", ModelConfig, raw)
        _validate_model(ctx, model, base)
        if model.name in seen:
            raise ctx.fail(f"models.{model.name}", "name", "a model of this name is already configured")
        seen.add(model.name)
        if model.device is None:
            model.device = cfg.server.device
        if check_files:
            if not Path(model.onnx).is_file():
                raise ctx.fail(f"models.{model.name}", "onnx", f"file not found: {model.onnx}")
            if model.postprocess.labels and not Path(model.postprocess.labels).is_file():
                raise ctx.fail(f"models.{model.name}.postprocess", "labels",
                               f"file not found: {model.postprocess.labels}")
            for key in ("images", "validation"):
                val = getattr(model.calibration, key)
                if val and not Path(val).exists():
                    raise ctx.fail(f"models.{model.name}.calibration", key, f"not found: {val}")
        cfg.models.append(model)
    _add_streams(ctx, cfg, streams_raw, base)
    cfg.cache.dir = os.path.expanduser(cfg.cache.dir)
    return cfg


SOURCE_FILE, SOURCE_URL, SOURCE_DEVICE, SOURCE_GSTREAMER = "file", "url", "device", "gstreamer"


def source_kind(source: str) -> str:
    """What a [[streams]] source names: a GStreamer pipeline (has "!" before any "://"), a URL,
    a V4L2 device (/dev/videoN, or a camera index), else a file. The one place this is decided:
    the config resolves files against its folder by it, the streams open sources by it."""
    if "!" in source and "://" not in source.split("!")[0]:
        return SOURCE_GSTREAMER
    if "://" in source:
        return SOURCE_URL
    if source.startswith("/dev/video") or source.isdigit():
        return SOURCE_DEVICE
    return SOURCE_FILE


def _add_streams(ctx: _Ctx, cfg: Config, streams_raw, base: Path) -> None:
    if isinstance(streams_raw, dict):
        raise ctx.fail("", "streams", "expected [[streams]] entries (an array of tables), got a single table")
    if not isinstance(streams_raw, list):
        raise ctx.fail("", "streams", f"expected [[streams]] entries, got {streams_raw!r}")
    models = {m.name for m in cfg.models}
    for i, raw in enumerate(streams_raw):
        if not isinstance(raw, dict):
            raise ctx.fail("streams", f"[{i}]", "expected a table")
        label = raw.get("name") if isinstance(raw.get("name"), str) else f"#{i + 1}"
        table = f"streams.{label}"
        s = _build(ctx, table, StreamConfig, raw)
        if not s.name or not all(c.isalnum() or c in "-_." for c in s.name):
            raise ctx.fail("streams", "name", f"expected letters, digits, '-', '_' or '.', got {s.name!r}")
        if any(o.name == s.name for o in cfg.streams):
            raise ctx.fail(table, "name", "a stream of this name is already configured")
        if s.model not in models:
            raise ctx.fail(table, "model", f"no model {s.model!r} is configured "
                           f"(configured: {', '.join(sorted(models)) or 'none'})")
        if not s.source.strip():
            raise ctx.fail(table, "source", "expected a file, URL, /dev/videoN or GStreamer pipeline")
        if source_kind(s.source) == SOURCE_FILE:
            # A file: relative to the config file. Checked at run time too (the stream's state says
            # why), so a file that appears later is picked up by the reconnect loop.
            s.source = str((base / os.path.expanduser(s.source)).resolve())
        cfg.streams.append(s)


DEVICE_ENV = "EDGEINFER_DEVICE"


def _apply_device_env(ctx: _Ctx, cfg: Config) -> None:
    """EDGEINFER_DEVICE overrides [server] device (one daemon per GPU from one config file)."""
    value = os.environ.get(DEVICE_ENV, "").strip()
    if not value:
        return
    if not value.isdigit():
        raise ConfigError(f"{ctx.source}: environment {DEVICE_ENV}={value!r}: expected a GPU index "
                          f"(an integer >= 0) overriding [server] device")
    cfg.server.device = int(value)


def check_devices(cfg: Config, visible_gpus: int) -> None:
    """Refuse a GPU index that does not exist; `visible_gpus`: GPUs this process sees (0 = none, CPU only:
    nothing to check, the models run on the CPU).

    Raises:
        ConfigError: naming the key ([server] device, EDGEINFER_DEVICE or [models.X] device).
    """
    if visible_gpus <= 0:
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    seen = f"{visible_gpus} GPU(s) visible" + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else "")
    if cfg.server.device >= visible_gpus:
        key = f"environment {DEVICE_ENV}" if os.environ.get(DEVICE_ENV, "").strip() else "[server] device"
        raise ConfigError(f"{cfg.source}: {key} = {cfg.server.device}: no such GPU, {seen}; "
                          f"indexes count from 0 within the visible set")
    for m in cfg.models:
        if m.device is not None and m.device >= visible_gpus:
            raise ConfigError(f"{cfg.source}: [models.{m.name}] device = {m.device}: no such GPU, {seen}; "
                              f"indexes count from 0 within the visible set")


def load_config(path: Union[str, Path], check_files: bool = True) -> Config:
    """Read and validate a TOML config file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(data, source=str(path), base_dir=path.resolve().parent, check_files=check_files)
