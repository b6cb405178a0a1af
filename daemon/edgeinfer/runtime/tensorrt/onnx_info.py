"""What the TensorRT loader needs to know about an ONNX file before TensorRT sees it:
its inputs (for the default optimization profile) and a content hash (for the cache key).

Uses the `onnx` package only (a daemon dependency); weights are not loaded.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

import numpy as np

from edgeinfer.runtime.base import TensorSpec

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _load(path: Path):
    import onnx

    return onnx.load(str(path), load_external_data=False)


def _all_tensors(graph):
    """Initializers and tensor attributes of `graph` and its subgraphs (If/Loop bodies)."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


def _external_files(model, base: Path) -> list[Path]:
    """Files holding external initializers (large models), so weight changes rebuild too."""
    from onnx import TensorProto

    files = set()
    for tensor in _all_tensors(model.graph):
        if tensor.HasField("data_location") and tensor.data_location == TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    files.add(base / entry.value)
    return sorted(files)


def onnx_sha256(path: Path, model=None) -> str:
    """sha256 over the ONNX file and, in name order, any external-data files it references."""
    path = Path(path)
    model = model if model is not None else _load(path)
    extra = _external_files(model, path.parent)
    if not extra:
        return sha256_file(path)
    h = hashlib.sha256(sha256_file(path).encode())
    for f in extra:
        h.update(f.name.encode() + b"\0" + sha256_file(f).encode())
    return h.hexdigest()


def onnx_inputs(path: Path, model=None) -> list[TensorSpec]:
    """Graph inputs that are not initializers; symbolic or unknown dims become -1."""
    from onnx import helper

    model = model if model is not None else _load(Path(path))
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    specs = []
    for value in graph.input:
        if value.name in initializers:
            continue
        ttype = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
                     for d in ttype.shape.dim)
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(ttype.elem_type))
        except Exception:  # noqa: BLE001 - bfloat16 etc.
            dtype = np.dtype(np.float32)
        specs.append(TensorSpec(value.name, dtype, dims))
    return specs


def describe(path: Path) -> tuple[list[TensorSpec], str]:
    """(inputs, sha256) reading the file's graph once."""
    model = _load(Path(path))
    return onnx_inputs(path, model), onnx_sha256(path, model)


def names(specs: Iterable[TensorSpec]) -> list[str]:
    return [s.name for s in specs]
