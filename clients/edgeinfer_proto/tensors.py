"""numpy <-> edgeinfer.v1 Tensor messages, for the daemon and the client alike.

Tensor bytes travel little-endian in C order; on little-endian hosts (every
Jetson and x86/ARM server) no byte is converted either way.
"""
from __future__ import annotations

import sys

import numpy as np

from edgeinfer_proto.edgeinfer.v1 import inference_pb2 as pb

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
