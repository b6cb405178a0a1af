"""KServe v2 (package inference) messages <-> numpy and domain objects.

Tensors travel as the specification says: either typed `contents` per input, or
`raw_input_contents` for every input (little-endian, C order; a BYTES tensor's
elements each prefixed by their length as a 4-byte little-endian integer).
Outputs always go back as `raw_output_contents`, as Triton answers.
"""
from __future__ import annotations

import math
import struct
from typing import Optional, Sequence

import numpy as np

from edgeinfer_proto.inference import grpc_service_pb2 as pb
from edgeinfer_proto.inference import model_config_pb2 as mc

from edgeinfer.errors import InvalidInput
from edgeinfer.model.families.postprocess import Options, Result
from edgeinfer.model.served import ServedModel
from edgeinfer.rpc.converters import MAX_RANK

# KServe datatype name -> numpy dtype as it travels (little-endian).
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
BYTES = "BYTES"
_NAME_OF = {dt.newbyteorder("="): name for name, dt in DTYPES.items()}

# Which field of InferTensorContents holds each datatype (FP16 has none: raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    BYTES: "bytes_contents",
}



def datatype_of(dtype: np.dtype) -> str:
    """The KServe datatype name of a numpy dtype (object and bytes arrays are BYTES)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return BYTES
    name = _NAME_OF.get(dtype.newbyteorder("="))
    if name is None:
        raise InvalidInput(f"dtype {dtype} has no KServe v2 datatype")
    return name


def config_data_type(dtype: np.dtype) -> int:
    """model_config.DataType of a numpy dtype (BYTES is TYPE_STRING there)."""
    name = datatype_of(dtype)
    return mc.TYPE_STRING if name == BYTES else mc.DataType.Value(f"TYPE_{name}")


# -- requests -------------------------------------------------------------------

def _shape(name: str, dims: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(dims)
    if len(shape) > MAX_RANK:
        raise InvalidInput(f"input {name!r}: rank {len(shape)} is over the limit of {MAX_RANK}")
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input {name!r}: shape {list(shape)} has a negative dimension")
    return shape


def deserialize_bytes(name: str, raw: bytes, count: int) -> np.ndarray:
    """A BYTES tensor's raw contents (4-byte little-endian length, then the bytes, per element)."""
    items = []
    offset, end = 0, len(raw)
    view = memoryview(raw)
    while offset < end:
        if offset + 4 > end:
            raise InvalidInput(f"input {name!r}: BYTES contents end inside an element's 4-byte length")
        (n,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + n > end:
            raise InvalidInput(f"input {name!r}: BYTES element {len(items)} says {n} bytes, "
                               f"only {end - offset} remain")
        items.append(bytes(view[offset:offset + n]))
        offset += n
    if len(items) != count:
        raise InvalidInput(f"input {name!r}: shape needs {count} BYTES elements, the raw contents hold {len(items)}")
    arr = np.empty(count, dtype=object)
    arr[:] = items
    return arr


def serialize_bytes(array: np.ndarray) -> bytes:
    """A BYTES tensor as raw contents (C order)."""
    parts = []
    for item in array.reshape(-1):
        b = item if isinstance(item, (bytes, bytearray)) else str(item).encode()
        parts.append(struct.pack("<I", len(b)))
        parts.append(bytes(b))
    return b"".join(parts)


def _from_contents(t, shape: tuple[int, ...], count: int) -> np.ndarray:
    field = CONTENTS_FIELD.get(t.datatype)
    if field is None:
        raise InvalidInput(f"input {t.name!r}: datatype {t.datatype} has no typed contents field; "
                           f"send it in raw_input_contents")
    values = getattr(t.contents, field)
    if len(values) != count:
        raise InvalidInput(f"input {t.name!r}: shape {list(shape)} needs {count} values, "
                           f"contents.{field} holds {len(values)}")
    if t.datatype == BYTES:
        arr = np.empty(count, dtype=object)
        arr[:] = list(values)
        return arr.reshape(shape)
    return np.asarray(values, dtype=DTYPES[t.datatype]).reshape(shape)


def request_arrays(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    """The request's inputs as numpy arrays (BYTES as object arrays of bytes).

    Raises InvalidInput for an unknown datatype, a shape the data does not fill, raw contents
    given for some inputs but not all, or an input sent twice.
    """
    inputs = request.inputs
    if not inputs:
        raise InvalidInput("request has no inputs (field 'inputs' is empty)")
    raw = request.raw_input_contents
    if raw and len(raw) != len(inputs):
        raise InvalidInput(f"raw_input_contents holds {len(raw)} tensors for {len(inputs)} inputs: "
                           f"it must be used for all inputs or none")
    arrays: dict[str, np.ndarray] = {}
    for i, t in enumerate(inputs):
        name = t.name
        if not name:
            raise InvalidInput(f"input {i} has no name (field 'name' is empty)")
        if name in arrays:
            raise InvalidInput(f"input {name!r} is sent twice")
        if t.datatype != BYTES and t.datatype not in DTYPES:
            raise InvalidInput(f"input {name!r}: datatype must be one of {sorted([*DTYPES, BYTES])}, "
                               f"got {t.datatype!r}")
        shape = _shape(name, t.shape)
        count = math.prod(shape)
        if raw:
            if t.HasField("contents") and t.contents.ByteSize():
                raise InvalidInput(f"input {name!r} has both contents and raw_input_contents")
            data = raw[i]
            if t.datatype == BYTES:
                arrays[name] = deserialize_bytes(name, data, count).reshape(shape)
                continue
            dtype = DTYPES[t.datatype]
            if count * dtype.itemsize != len(data):
                raise InvalidInput(f"input {name!r}: shape {list(shape)} of {t.datatype} needs "
                                   f"{count * dtype.itemsize} bytes, raw_input_contents[{i}] holds {len(data)}")
            arrays[name] = np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)
        else:
            arrays[name] = _from_contents(t, shape, count)
    return arrays


def _param_value(name: str, p: pb.InferParameter):
    kind = p.WhichOneof("parameter_choice")
    return None if kind is None else getattr(p, kind)


def request_options(request: pb.ModelInferRequest) -> Options:
    """Request parameters that edgeinfer reads: top_k, score_threshold, nms_iou_threshold.

    Other parameters are ignored, as Triton passes unknown ones to the model unread.
    """
    params = request.parameters
    if not params:
        return Options(include_raw_outputs=True)
    values = {}
    for key, want in (("top_k", int), ("score_threshold", float), ("nms_iou_threshold", float)):
        if key not in params:
            continue
        v = _param_value(key, params[key])
        ok = isinstance(v, int) and not isinstance(v, bool) if want is int else (
            isinstance(v, (int, float)) and not isinstance(v, bool))
        if not ok:
            raise InvalidInput(f"parameter {key!r} must be {'an integer' if want is int else 'a number'}, "
                               f"got {v!r}")
        if want is int and v < 0:
            raise InvalidInput(f"parameter 'top_k' must be >= 0, got {v}")
        values[key] = want(v)
    return Options(top_k=values.get("top_k", 0), score_threshold=values.get("score_threshold"),
                   nms_iou_threshold=values.get("nms_iou_threshold"), include_raw_outputs=True)


def image_rows(arrays: dict[str, np.ndarray], model: ServedModel) -> Optional[list[bytes]]:
    """The encoded images of a request to an image model: its one BYTES input, one image per
    batch row ([N] or [N, 1]). None: the request is tensors."""
    if len(arrays) != 1:
        return None
    (name, arr), = arrays.items()
    if arr.dtype != object:
        return None
    if model.image_input is None:
        raise InvalidInput(f"model {model.name!r} takes tensors, not encoded images: BYTES input {name!r} "
                           f"cannot be fed to it")
    if arr.ndim == 0 or (arr.ndim == 2 and arr.shape[1] != 1) or arr.ndim > 2:
        raise InvalidInput(f"input {name!r}: encoded images go one per batch row, shape [N] or [N, 1]; "
                           f"got {list(arr.shape)}")
    rows = [bytes(x) for x in arr.reshape(-1)]
    if not rows:
        raise InvalidInput(f"input {name!r} holds no image")
    return rows


# -- responses ------------------------------------------------------------------

def image_outputs(model: ServedModel, results: list[Result]) -> dict[str, np.ndarray]:
    """One row per image: classification -> scores, classes, labels; detection -> boxes, scores,
    classes, labels, counts (and landmarks where the family has them). Rows with fewer
    classes or detections than the longest are padded: score 0, class -1, label "", box zeros."""
    n = len(results)
    if any(r.classes for r in results) or model.cfg.postprocess.task == "classification":
        k = max((len(r.classes) for r in results), default=0)
        scores = np.zeros((n, k), np.float32)
        classes = np.full((n, k), -1, np.int64)
        labels = np.full((n, k), b"", dtype=object)
        for i, r in enumerate(results):
            for j, c in enumerate(r.classes):
                scores[i, j], classes[i, j], labels[i, j] = c.score, c.index, c.label.encode()
        return {"scores": scores, "classes": classes, "labels": labels}
    if model.cfg.postprocess.task == "raw":
        # Raw outputs of one image each: stacked on the batch axis.
        names = list(results[0].outputs)
        return {name: np.concatenate([r.outputs[name] for r in results]) for name in names}
    d = max((len(r.detections) for r in results), default=0)
    boxes = np.zeros((n, d, 4), np.float32)
    scores = np.zeros((n, d), np.float32)
    classes = np.full((n, d), -1, np.int64)
    labels = np.full((n, d), b"", dtype=object)
    counts = np.zeros((n,), np.int32)
    marks = [det.landmarks for r in results for det in r.detections if det.landmarks is not None]
    landmarks = np.zeros((n, d) + marks[0].shape, np.float32) if marks else None
    for i, r in enumerate(results):
        counts[i] = len(r.detections)
        for j, det in enumerate(r.detections):
            boxes[i, j] = det.box
            scores[i, j], classes[i, j], labels[i, j] = det.score, det.class_index, det.label.encode()
            if landmarks is not None and det.landmarks is not None:
                landmarks[i, j] = det.landmarks
    out = {"boxes": boxes, "scores": scores, "classes": classes, "labels": labels, "counts": counts}
    if landmarks is not None:
        out["landmarks"] = landmarks
    return out


def response(model: ServedModel, request: pb.ModelInferRequest, outputs: dict[str, np.ndarray],
             parameters: Optional[dict[str, int]] = None) -> pb.ModelInferResponse:
    """The response holding the requested outputs (all of them when none were named), raw."""
    wanted = [o.name for o in request.outputs]
    if wanted:
        missing = [w for w in wanted if w not in outputs]
        if missing:
            raise InvalidInput(f"unexpected inference output {missing[0]!r} for model {model.name!r}; "
                               f"its outputs: {sorted(outputs)}")
    else:
        wanted = list(outputs)
    msg = pb.ModelInferResponse(model_name=model.name, model_version=model.cfg.version, id=request.id)
    for key, value in (parameters or {}).items():
        msg.parameters[key].int64_param = value
    for name in wanted:
        arr = np.asarray(outputs[name])
        datatype = datatype_of(arr.dtype)
        msg.outputs.add(name=name, datatype=datatype, shape=arr.shape)
        if datatype == BYTES:
            msg.raw_output_contents.append(serialize_bytes(arr))
        else:
            msg.raw_output_contents.append(np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes())
    return msg


# -- model metadata and configuration -------------------------------------------

PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}


def batched(runner) -> bool:
    """Whether every input and output has a dynamic batch axis (Triton's max_batch_size > 0)."""
    return all(s.dynamic_batch for s in list(runner.inputs) + list(runner.outputs))


def model_metadata(model: ServedModel) -> pb.ModelMetadataResponse:
    runner = model.runner
    msg = pb.ModelMetadataResponse(name=model.name, versions=[model.cfg.version])
    if runner is None:
        return msg
    msg.platform = PLATFORMS.get(runner.info.backend, runner.info.backend)
    for spec in runner.inputs:
        msg.inputs.add(name=spec.name, datatype=datatype_of(spec.dtype), shape=list(spec.shape))
    for spec in runner.outputs:
        msg.outputs.add(name=spec.name, datatype=datatype_of(spec.dtype), shape=list(spec.shape))
    return msg


def model_config(model: ServedModel, max_batch: int) -> mc.ModelConfig:
    """Triton's view of the model: dims leave the batch axis out when max_batch_size > 0."""
    runner = model.runner
    cfg = mc.ModelConfig(name=model.name)
    if runner is None:
        return cfg
    info = runner.info
    cfg.platform = PLATFORMS.get(info.backend, info.backend)
    cfg.backend = info.backend
    has_batch = batched(runner)
    cfg.max_batch_size = max(max_batch, 1) if has_batch else 0
    layout = model.cfg.input.layout if model.image_input is not None else None
    for spec in runner.inputs:
        dims = list(spec.shape[1:] if has_batch else spec.shape)
        t = cfg.input.add(name=spec.name, data_type=config_data_type(spec.dtype), dims=dims)
        if layout is not None and spec.name == model.image_input.name:
            t.format = mc.ModelInput.FORMAT_NCHW if layout == "NCHW" else mc.ModelInput.FORMAT_NHWC
    for spec in runner.outputs:
        cfg.output.add(name=spec.name, data_type=config_data_type(spec.dtype),
                       dims=list(spec.shape[1:] if has_batch else spec.shape))
    if has_batch and max_batch > 1:
        b = model.cfg.batching
        cfg.dynamic_batching.max_queue_delay_microseconds = b.max_queue_delay_us
        cfg.dynamic_batching.preferred_batch_size.extend(b.preferred_batch_sizes)
    cfg.parameters["precision"].string_value = info.precision
    cfg.parameters["device"].string_value = info.device
    cfg.parameters["task"].string_value = model.cfg.postprocess.task
    return cfg
