"""numpy <-> protobuf tensors, and request building. Shared with the daemon."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np

from ._proto.edgeinfer.v1 import inference_pb2 as pb

DTYPES: dict[int, np.dtype] = {
    pb.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    pb.DATA_TYPE_FLOAT16: np.dtype("<f2"),
    pb.DATA_TYPE_FLOAT64: np.dtype("<f8"),
    pb.DATA_TYPE_INT8: np.dtype("i1"),
    pb.DATA_TYPE_UINT8: np.dtype("u1"),
    pb.DATA_TYPE_INT16: np.dtype("<i2"),
    pb.DATA_TYPE_INT32: np.dtype("<i4"),
    pb.DATA_TYPE_INT64: np.dtype("<i8"),
    pb.DATA_TYPE_BOOL: np.dtype("?"),
}
# Native-order numpy dtype -> proto enum.
PB_DTYPE: dict[np.dtype, int] = {v.newbyteorder("="): k for k, v in DTYPES.items()}

PIXEL_FORMATS = {
    "rgb": pb.PIXEL_FORMAT_RGB,
    "bgr": pb.PIXEL_FORMAT_BGR,
    "gray": pb.PIXEL_FORMAT_GRAY,
    "rgba": pb.PIXEL_FORMAT_RGBA,
    "bgra": pb.PIXEL_FORMAT_BGRA,
}

ImageLike = Union[bytes, str, Path, np.ndarray]


LITTLE_ENDIAN = sys.byteorder == "little"


def _wire(name: str, array: np.ndarray) -> tuple[int, bytes]:
    """The wire dtype code and little-endian bytes of `array`."""
    dtype = array.dtype
    code = PB_DTYPE.get(dtype) if (LITTLE_ENDIAN and dtype.byteorder != ">") else None
    if code is not None:
        # Native little-endian (the common case): tobytes() is already C order and the wire's byte order.
        return code, array.tobytes()
    code = PB_DTYPE.get(dtype.newbyteorder("="))
    if code is None:
        raise TypeError(f"tensor {name!r}: dtype {dtype} has no protobuf equivalent")
    return code, array.astype(dtype.newbyteorder("<"), copy=False).tobytes()


def to_tensor(name: str, array: np.ndarray) -> pb.Tensor:
    """numpy -> Tensor (little-endian bytes)."""
    code, data = _wire(name, array)
    return pb.Tensor(name=name, dtype=code, shape=array.shape, data=data)


def add_tensor(tensors, name: str, array: np.ndarray) -> pb.Tensor:
    """numpy -> a new Tensor at the end of the repeated field `tensors`, built in place.

    Cheaper than appending `to_tensor(...)`, which builds a message and then copies it in.
    """
    code, data = _wire(name, array)
    return tensors.add(name=name, dtype=code, shape=array.shape, data=data)


# Wire dtype -> native dtype: the same object on little-endian hosts, so no conversion is made there.
NATIVE: dict[int, np.dtype] = {k: v.newbyteorder("=") for k, v in DTYPES.items()}


def from_tensor(t: pb.Tensor) -> np.ndarray:
    """Tensor -> numpy (native byte order). Trusts a well-formed message."""
    dtype = DTYPES[t.dtype]
    arr = np.frombuffer(t.data, dtype=dtype).reshape(tuple(t.shape))
    return arr if LITTLE_ENDIAN else arr.astype(NATIVE[t.dtype])


def build_request(model: str, image: Optional[ImageLike] = None, *, tensors: Optional[Mapping[str, np.ndarray]] = None,
                  pixel_format: str = "rgb", request_id: str = "", top_k: int = 0,
                  score_threshold: Optional[float] = None, nms_iou_threshold: Optional[float] = None,
                  include_raw_outputs: bool = False) -> pb.InferRequest:
    """One InferRequest from an image (encoded bytes, a file path, or HxW[xC] uint8 pixels) or tensors."""
    req = pb.InferRequest(model=model, request_id=request_id)
    if (image is None) == (tensors is None):
        raise ValueError("give exactly one of image or tensors")
    if tensors is not None:
        req.tensors.tensors.extend(to_tensor(n, a) for n, a in tensors.items())
    elif isinstance(image, (bytes, bytearray, memoryview)):
        req.image = bytes(image)
    elif isinstance(image, (str, Path)):
        req.image = Path(image).read_bytes()
    else:
        arr = np.ascontiguousarray(image)
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
            raise ValueError(f"pixel arrays must be uint8 HxW or HxWxC, got {arr.dtype} {arr.shape}")
        if arr.ndim == 2:
            pixel_format = "gray"
        if pixel_format not in PIXEL_FORMATS:
            raise ValueError(f"pixel_format must be one of {sorted(PIXEL_FORMATS)}")
        req.raw_image.height, req.raw_image.width = arr.shape[:2]
        req.raw_image.format = PIXEL_FORMATS[pixel_format]
        req.raw_image.data = arr.tobytes()
    opts = req.options
    opts.top_k = top_k
    opts.include_raw_outputs = include_raw_outputs
    if score_threshold is not None:
        opts.score_threshold = score_threshold
    if nms_iou_threshold is not None:
        opts.nms_iou_threshold = nms_iou_threshold
    return req
