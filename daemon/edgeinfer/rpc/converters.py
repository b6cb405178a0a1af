"""protobuf <-> numpy and domain objects, in one place."""
from __future__ import annotations

import math

import numpy as np

from edgeinfer_proto.tensors import LITTLE_ENDIAN, DTYPES, NATIVE, PB_DTYPE, add_tensor
from edgeinfer_proto.edgeinfer.v1 import inference_pb2 as pb

from edgeinfer.errors import InvalidInput
from edgeinfer.model.served import ServedModel
from edgeinfer.model.types import EncodedImage, ModelInput, ModelState, Prediction, RawPixels, Tensors
from edgeinfer.model.families.postprocess import Options

PIXEL_FORMATS = {
    pb.PIXEL_FORMAT_RGB: "rgb",
    pb.PIXEL_FORMAT_BGR: "bgr",
    pb.PIXEL_FORMAT_GRAY: "gray",
    pb.PIXEL_FORMAT_RGBA: "rgba",
    pb.PIXEL_FORMAT_BGRA: "bgra",
}

STATES = {
    ModelState.LOADING: pb.MODEL_STATE_LOADING,
    ModelState.READY: pb.MODEL_STATE_READY,
    ModelState.FAILED: pb.MODEL_STATE_FAILED,
}

MAX_RANK = 8
# A top_k beyond any label set a model has: larger values are a client's mistake, not a request.
MAX_TOP_K = 100_000


# -- requests -------------------------------------------------------------------

def tensor_to_numpy(t: pb.Tensor) -> np.ndarray:
    """Raises InvalidInput for unknown dtypes, bad shapes or a byte count that does not fit."""
    name = t.name
    if not name:
        raise InvalidInput("tensor has no name (field 'name' is empty)")
    code = t.dtype
    dtype = DTYPES.get(code)
    if dtype is None:
        raise InvalidInput(f"tensor {name!r}: dtype must be set to one of "
                           f"{[pb.DataType.Name(k) for k in DTYPES]}, got {pb.DataType.Name(code) if code in pb.DataType.values() else code}")
    shape = tuple(t.shape)
    if len(shape) > MAX_RANK:
        raise InvalidInput(f"tensor {name!r}: rank {len(shape)} is over the limit of {MAX_RANK}")
    if shape and min(shape) <= 0:
        raise InvalidInput(f"tensor {name!r}: shape {list(shape)} has a "
                           f"{'negative' if min(shape) < 0 else 'zero'} dimension")
    count = math.prod(shape)  # Python ints: no overflow, and no numpy call on a 4-element list
    data = t.data
    if count * dtype.itemsize != len(data):
        raise InvalidInput(f"tensor {name!r}: shape {list(shape)} of {dtype.name} needs {count * dtype.itemsize} bytes, "
                           f"got {len(data)}")
    arr = np.frombuffer(data, dtype=dtype).reshape(shape)
    return arr if LITTLE_ENDIAN else arr.astype(NATIVE[code])


def add_output(outputs, name: str, array: np.ndarray) -> pb.Tensor:
    """Append an output tensor to a response's repeated `outputs`, built in place."""
    if array.dtype not in PB_DTYPE and array.dtype.newbyteorder("=") not in PB_DTYPE:
        array = array.astype(np.float32)  # e.g. an output type the API does not name
    return add_tensor(outputs, name, array)


def request_input(request: pb.InferRequest, max_tensor_bytes: int = 0, max_rows: int = 0) -> ModelInput:
    """The request's input as a domain object; max_tensor_bytes / max_rows: [limits] (0 = none).

    Raises:
        InvalidInput: a field is missing or malformed, or a tensor limit is exceeded.
    """
    kind = request.WhichOneof("input")
    if kind is None:
        raise InvalidInput("request has no input: set one of 'image', 'raw_image' or 'tensors'")
    if kind == "image":
        return EncodedImage(request.image)
    if kind == "raw_image":
        raw = request.raw_image
        fmt = PIXEL_FORMATS.get(raw.format)
        if fmt is None:
            raise InvalidInput("raw_image: 'format' must be set (PIXEL_FORMAT_RGB, _BGR, _GRAY, _RGBA or _BGRA)")
        return RawPixels(raw.height, raw.width, fmt, raw.data)
    tensors = request.tensors.tensors
    if not tensors:
        raise InvalidInput("tensors: the tensor set is empty")
    if max_tensor_bytes:
        total = sum(len(t.data) for t in tensors)
        if total > max_tensor_bytes:
            raise InvalidInput(f"tensors: {total} bytes, over the limit of {max_tensor_bytes} ([limits] max_tensor_bytes)")
    arrays = {}
    for t in tensors:
        array = tensor_to_numpy(t)
        name = t.name
        if name in arrays:
            raise InvalidInput(f"tensor {name!r} is sent twice")
        arrays[name] = array
        if max_rows and array.ndim and array.shape[0] > max_rows:
            raise InvalidInput(f"tensor {name!r}: {array.shape[0]} rows, over the limit of {max_rows} "
                               f"([limits] max_batch_rows)")
    return Tensors(arrays)


_DEFAULT_OPTIONS = Options()


def request_options(request: pb.InferRequest) -> Options:
    o = request.options
    if not o.ByteSize():  # every field at its default: most requests, no object to build
        return _DEFAULT_OPTIONS
    if o.top_k > MAX_TOP_K:
        raise InvalidInput(f"options.top_k: {o.top_k} is over the limit of {MAX_TOP_K}")
    for key in ("score_threshold", "nms_iou_threshold"):
        if o.HasField(key):
            value = getattr(o, key)
            if not (0.0 <= value <= 1.0):  # NaN fails this too
                raise InvalidInput(f"options.{key}: expected a number between 0 and 1, got {value}")
    return Options(
        top_k=o.top_k,
        score_threshold=o.score_threshold if o.HasField("score_threshold") else None,
        nms_iou_threshold=o.nms_iou_threshold if o.HasField("nms_iou_threshold") else None,
        include_raw_outputs=o.include_raw_outputs,
    )


# -- responses --------------------------------------------------------------------

def response(model: ServedModel, request_id: str, pred: Prediction) -> pb.InferResponse:
    r = pred.result
    t = pred.timing
    msg = pb.InferResponse(model=model.name, model_version=model.cfg.version, request_id=request_id,
                           backend=pred.backend, precision=pred.precision)
    if pred.image_size[0]:
        msg.image_width, msg.image_height = pred.image_size
    timing = msg.timing
    timing.queue_us, timing.preprocess_us, timing.inference_us = t.queue_us, t.preprocess_us, t.inference_us
    timing.postprocess_us, timing.total_us, timing.batch_size = t.postprocess_us, t.total_us, t.batch_size
    for c in r.classes:
        msg.classes.add(index=c.index, label=c.label, score=c.score)
    for d in r.detections:
        det = msg.detections.add(score=d.score, class_index=d.class_index, label=d.label)
        det.box.x1, det.box.y1, det.box.x2, det.box.y2 = d.box
        if d.landmarks is not None:
            for x, y in d.landmarks:
                det.landmarks.add(x=float(x), y=float(y))
    for name, arr in r.outputs.items():
        add_output(msg.outputs, name, arr)
    return msg


def _tensor_info(spec) -> pb.TensorInfo:
    code = PB_DTYPE.get(np.dtype(spec.dtype).newbyteorder("="), pb.DATA_TYPE_UNSPECIFIED)
    return pb.TensorInfo(name=spec.name, dtype=code, shape=list(spec.shape))


def model_info(model: ServedModel) -> pb.ModelInfo:
    runner = model.runner
    info = pb.ModelInfo(name=model.name, version=model.cfg.version, state=STATES[model.state],
                        state_reason=model.state_reason, task=model.cfg.postprocess.task,
                        labels_count=len(model.labels))
    if runner is not None:
        ri = runner.info
        info.backend, info.precision, info.device = ri.backend, ri.precision, ri.device
        info.max_batch = ri.max_batch or 0
        info.inputs.extend(_tensor_info(s) for s in runner.inputs)
        info.outputs.extend(_tensor_info(s) for s in runner.outputs)
    for a in model.attempts:
        info.attempts.add(backend=a.backend, precision=a.precision, outcome=a.outcome, reason=a.reason)
    for rep in model.accuracy:
        msg = info.accuracy.add(precision=rep.precision, gate_metric=rep.gate_metric,
                                threshold=rep.threshold, passed=rep.passed, samples=rep.samples)
        for k, v in rep.metrics.items():
            msg.metrics[k] = float(v)
    return info


def error_status(code, message: str) -> pb.ErrorStatus:
    return pb.ErrorStatus(code=code.name, code_value=code.value[0], message=message)

