"""Hypothesis strategies for what a hostile client sends: whole InferRequests (images, raw pixels,
tensors, options), their serialized bytes mangled, and images made real then cut, padded, flipped or
given lying headers."""
from __future__ import annotations

import struct

import numpy as np
from hypothesis import strategies as st

from edgeinfer_proto.edgeinfer.v1 import inference_pb2 as pb

MODELS = ("faces", "imagenet", "nosuch", "")
TENSOR_NAMES = ("input", "input.1", "x", "", "extra")

# What a client may be answered; anything else (UNKNOWN, INTERNAL, ...) is a bug.
CLIENT_STATUSES = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED"}


def _exif(orientation: int) -> bytes:
    """An APP1 Exif segment carrying one Orientation tag (little-endian TIFF)."""
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + struct.pack("<HHII", 0x0112, 3, 1, orientation)
    tiff += b"\x00\x00\x00\x00"
    body = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body


@st.composite
def encoded_images(draw) -> bytes:
    import cv2

    shape = draw(st.sampled_from(["small", "wide", "tall", "square"]))
    if shape == "wide":
        w, h = draw(st.integers(200, 40000)), draw(st.integers(1, 3))
    elif shape == "tall":
        w, h = draw(st.integers(1, 3)), draw(st.integers(200, 40000))
    elif shape == "square":
        w = h = draw(st.integers(1, 700))
    else:
        w, h = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    channels = draw(st.sampled_from([1, 3, 4]))
    fmt = draw(st.sampled_from([".png", ".jpg", ".bmp", ".webp", ".png16"]))
    if fmt == ".webp" and max(w, h) > 16383:
        fmt = ".png"
    seed = draw(st.integers(0, 2 ** 16))
    rng = np.random.default_rng(seed)
    if fmt == ".png16":
        img = rng.integers(0, 65535, (h, w, channels), dtype=np.uint16)
        fmt = ".png"
    else:
        img = rng.integers(0, 255, (h, w, channels), dtype=np.uint8)
    if fmt == ".jpg" and channels == 4:
        img = img[:, :, :3]
    ok, buf = cv2.imencode(fmt, img)
    data = buf.tobytes() if ok else b""
    if fmt == ".jpg" and draw(st.booleans()):
        data = data[:2] + _exif(draw(st.integers(0, 9))) + data[2:]
    mutation = draw(st.sampled_from(["none", "truncate", "truncate+eoi", "pad", "flip", "header", "garbage"]))
    if mutation == "truncate" and data:
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif mutation == "truncate+eoi" and data:
        data = data[:draw(st.integers(0, len(data) - 1))] + b"\xff\xd9"
    elif mutation == "pad":
        data += draw(st.binary(min_size=1, max_size=64))
    elif mutation == "flip" and data:
        b = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(b) - 1))
            b[i] ^= draw(st.integers(1, 255))
        data = bytes(b)
    elif mutation == "header" and len(data) > 30:
        b = bytearray(data)
        # Lie about the size where PNG (IHDR), BMP and most JPEG headers keep it.
        at = draw(st.sampled_from([16, 18, 20, 22, 163]))
        at = min(at, len(b) - 4)
        b[at:at + 4] = struct.pack(">I", draw(st.integers(0, 2 ** 32 - 1)))
        data = bytes(b)
    elif mutation == "garbage":
        data = draw(st.binary(max_size=256))
    return data


@st.composite
def tensors(draw) -> pb.TensorSet:
    ts = pb.TensorSet()
    for _ in range(draw(st.integers(0, 3))):
        shape = draw(st.lists(st.one_of(st.integers(0, 4), st.sampled_from([1, 3, 32, 33, 64, 224, 480, 640]),
                                        st.integers(-2, 2 ** 62)), max_size=9))
        dtype = draw(st.one_of(st.sampled_from(list(range(10))), st.integers(-5, 2 ** 31 - 1)))
        count = 1
        for d in shape:
            count *= max(d, 0)
        itemsize = {1: 4, 2: 2, 3: 8, 4: 1, 5: 1, 6: 2, 7: 4, 8: 8, 9: 1}.get(dtype, 1)
        if 0 <= count * itemsize <= 4 << 20 and draw(st.booleans()):
            data = bytes(count * itemsize)  # the right size: reaches the model
        else:
            data = draw(st.binary(max_size=64))
        t = ts.tensors.add(name=draw(st.sampled_from(TENSOR_NAMES)), shape=shape, data=data)
        t.dtype = dtype if dtype in pb.DataType.values() else 0
    return ts


@st.composite
def requests(draw) -> pb.InferRequest:
    req = pb.InferRequest(model=draw(st.sampled_from(MODELS)), request_id=draw(st.text(max_size=8)))
    kind = draw(st.sampled_from(["image", "raw", "tensors", "none"]))
    if kind == "image":
        req.image = draw(encoded_images())
    elif kind == "raw":
        h, w = draw(st.integers(0, 300)), draw(st.integers(0, 300))
        req.raw_image.height, req.raw_image.width = h, w
        req.raw_image.format = draw(st.integers(0, 5))
        channels = {1: 3, 2: 3, 3: 1, 4: 4, 5: 4}.get(req.raw_image.format, 3)
        exact = draw(st.booleans())
        req.raw_image.data = bytes(h * w * channels) if exact else draw(st.binary(max_size=128))
    elif kind == "tensors":
        req.tensors.CopyFrom(draw(tensors()))
    o = req.options
    if draw(st.booleans()):
        o.top_k = draw(st.one_of(st.integers(0, 10), st.just(2 ** 32 - 1)))
    if draw(st.booleans()):
        o.score_threshold = draw(st.floats(allow_nan=True, allow_infinity=True, width=32))
    if draw(st.booleans()):
        o.nms_iou_threshold = draw(st.floats(allow_nan=True, allow_infinity=True, width=32))
    o.include_raw_outputs = draw(st.booleans())
    return req


@st.composite
def wire_messages(draw) -> bytes:
    """Serialized requests, some mangled into bytes that are not an InferRequest."""
    data = draw(requests()).SerializeToString()
    how = draw(st.sampled_from(["intact", "intact", "intact", "cut", "flip", "random"]))
    if how == "cut" and data:
        return data[:draw(st.integers(0, len(data) - 1))]
    if how == "flip" and data:
        b = bytearray(data)
        i = draw(st.integers(0, len(b) - 1))
        b[i] ^= draw(st.integers(1, 255))
        return bytes(b)
    if how == "random":
        return draw(st.binary(max_size=64))
    return data
