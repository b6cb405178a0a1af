"""What the load generator sends: real photos as JPEG bytes or raw pixels, or small tensors.

Requests are serialized once, up front: the load generator then sends bytes
as they are, so the client processes spend their CPU on the transport, not on
building protobufs (on a 2-core box every client cycle is a server cycle lost).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
PAYLOAD_KINDS = ("jpeg", "raw")


@dataclass
class Payload:
    """Serialized InferRequest messages for one model, and what they carry."""

    model: str
    kind: str               # "jpeg", "raw" or "tensor"
    requests: list[bytes]   # serialized edgeinfer.v1.InferRequest, sent round-robin
    description: str

    @property
    def mean_bytes(self) -> int:
        return int(sum(len(r) for r in self.requests) / len(self.requests))


def find_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted (deterministic order across runs)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return paths


def _decode_bgr(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot decode image {path}")
    return img


def image_payload(model: str, paths: Sequence[Path], kind: str = "jpeg", jpeg_quality: int = 90) -> Payload:
    """Requests carrying each photo as JPEG bytes (re-encoded at `jpeg_quality`) or raw RGB pixels."""
    import cv2

    from edgeinfer_client import build_request

    if kind not in PAYLOAD_KINDS:
        raise ValueError(f"payload kind must be one of {PAYLOAD_KINDS}, got {kind!r}")
    requests = []
    sizes = []
    for path in paths:
        bgr = _decode_bgr(path)
        sizes.append(f"{bgr.shape[1]}x{bgr.shape[0]}")
        if kind == "jpeg":
            ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            if not ok:
                raise ValueError(f"cannot encode {path} as JPEG")
            req = build_request(model, buf.tobytes())
        else:
            req = build_request(model, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), pixel_format="rgb")
        requests.append(req.SerializeToString())
    desc = f"{len(paths)} photos ({', '.join(sizes)}) as {'JPEG q%d' % jpeg_quality if kind == 'jpeg' else 'raw RGB'}"
    return Payload(model, kind, requests, desc)


def tensor_payload(model: str, shapes: dict[str, tuple[int, ...]], count: int = 8,
                   seed: int = 0) -> Payload:
    """Requests carrying random float32 tensors of the given shapes (raw-tensor path)."""
    from edgeinfer_client import build_request

    rng = np.random.default_rng(seed)
    requests = []
    for _ in range(count):
        tensors = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
        requests.append(build_request(model, tensors=tensors).SerializeToString())
    desc = ", ".join(f"{n} float32{list(s)}" for n, s in shapes.items())
    return Payload(model, "tensor", requests, desc)


def decode_requests(payload: Payload):
    """The payload's requests as edgeinfer ModelInputs (what the daemon's converter would make)."""
    from edgeinfer_proto.edgeinfer.v1 import inference_pb2 as pb

    from edgeinfer.rpc.converters import request_input

    return [request_input(pb.InferRequest.FromString(r)) for r in payload.requests]


def default_image_dir(start: Optional[Path] = None) -> Path:
    """assets/media under the current directory or the source checkout, where present."""
    candidates = [Path.cwd() / "assets" / "media", Path(__file__).resolve().parents[2] / "assets" / "media"]
    if start is not None:
        candidates.insert(0, Path(start))
    for c in candidates:
        if c.is_dir():
            return c
    return candidates[0]
