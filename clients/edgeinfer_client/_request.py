"""InferRequest building from what a caller has: a path, encoded bytes, pixels or tensors."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np

from edgeinfer_proto.edgeinfer.v1 import inference_pb2 as pb
from edgeinfer_proto.tensors import to_tensor

from .errors import ClientError

PIXEL_FORMATS = {
    "rgb": pb.PIXEL_FORMAT_RGB,
    "bgr": pb.PIXEL_FORMAT_BGR,
    "gray": pb.PIXEL_FORMAT_GRAY,
    "rgba": pb.PIXEL_FORMAT_RGBA,
    "bgra": pb.PIXEL_FORMAT_BGRA,
}

ImageLike = Union[bytes, str, Path, np.ndarray]


def build_request(model: str, image: Optional[ImageLike] = None, *, tensors: Optional[Mapping[str, np.ndarray]] = None,
                  pixel_format: str = "rgb", request_id: str = "", top_k: int = 0,
                  score_threshold: Optional[float] = None, nms_iou_threshold: Optional[float] = None,
                  include_raw_outputs: bool = False) -> pb.InferRequest:
    """One InferRequest from an image (encoded bytes, a file path, or HxW[xC] uint8 pixels) or tensors.

    Raises:
        ClientError: INVALID_ARGUMENT: the file cannot be read, or the arguments do not make a request.
    """
    try:
        return _build(model, image, tensors, pixel_format, request_id, top_k, score_threshold,
                      nms_iou_threshold, include_raw_outputs)
    except OSError as exc:
        raise ClientError("INVALID_ARGUMENT", f"cannot read image {image}: {exc.strerror or exc}") from None
    except (ValueError, TypeError) as exc:
        raise ClientError("INVALID_ARGUMENT", str(exc)) from None


def _build(model, image, tensors, pixel_format, request_id, top_k, score_threshold, nms_iou_threshold,
           include_raw_outputs) -> pb.InferRequest:
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
