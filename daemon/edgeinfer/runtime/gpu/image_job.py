"""What the GPU decode path hands a runner per image: the bytes or pixels and where they land.

Pure Python (no CUDA import): the served model builds these on the CPU side
(model/families/preprocess.py plans the resize, the same plan its own cv2 path
follows), and gpu/decoding_runner.py turns a batch of them into the model's
input tensor on the device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np


@dataclass(frozen=True, eq=False)
class Nv12Surface:
    """A video frame in GPU memory as NV12, the format NVDEC writes: `height` rows of luma, then
    `height / 2` rows of interleaved U and V, each row `pitch` bytes apart; `luma` and `chroma`
    are the two planes' device addresses on `device`. `owner` keeps the memory alive as long as
    this frame is referenced; `download` (when given) returns the planes as host uint8
    [height * 3 / 2, width], for whatever needs the pixels on the CPU.
    """

    width: int
    height: int
    pitch: int
    luma: int
    chroma: int
    device: int = 0
    owner: object = None
    download: Optional[Callable[[], np.ndarray]] = None

    def to_bgr(self) -> np.ndarray:
        """The frame as BGR uint8 [H, W, 3] on the host (cv2's conversion, as the CPU decode path gives),
        copied down and converted once however many consumers ask (a model, a snapshot)."""
        import cv2

        bgr = self.__dict__.get("_bgr")  # frozen: the cache goes around __setattr__
        if bgr is None:
            if self.download is None:
                raise ValueError("this frame cannot be copied to the host")
            bgr = cv2.cvtColor(np.ascontiguousarray(self.download()), cv2.COLOR_YUV2BGR_NV12)
            self.__dict__["_bgr"] = bgr
        return bgr


@dataclass(frozen=True, eq=False)
class ResizeJob:
    """One image of a batch for the GPU path.

    data: JPEG/PNG bytes nvImageCodec decodes on the device (EXIF orientation applied);
    empty when `pixels` holds an image the CPU decoded (formats sent to the CPU, raw pixels) or
    `frame` a video frame NVDEC decoded into GPU memory (NV12; swap_rb then relative to BGR).
    reduce: average k x k blocks of the decoded image first, as a JPEG decoded at 1/k
    scale on the CPU path would be (1: none). reduced_w/h: that reduced size, checked
    against what the decoder produced. resized_w/h, dx, dy: the ResizePlan.
    swap_rb: the source's channel order (RGB from nvImageCodec, BGR from OpenCV) is not the model's.
    """

    reduce: int
    reduced_w: int
    reduced_h: int
    resized_w: int
    resized_h: int
    dx: int
    dy: int
    swap_rb: bool
    data: bytes = b""
    pixels: Optional[np.ndarray] = None
    frame: Optional[Nv12Surface] = None

    def __post_init__(self) -> None:
        if not self.data and self.pixels is None and self.frame is None:
            raise ValueError("a ResizeJob needs encoded data, pixels or a frame")
        if self.reduce not in (1, 2, 4, 8):
            raise ValueError(f"reduce must be 1, 2, 4 or 8, got {self.reduce}")


def job_batch(jobs: list[ResizeJob]) -> np.ndarray:
    """Jobs as the 1-D object array a runner's image input carries (what batching stacks and pads)."""
    arr = np.empty(len(jobs), dtype=object)
    for i, j in enumerate(jobs):
        arr[i] = j
    return arr
