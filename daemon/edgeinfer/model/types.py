"""The data a served model takes and gives: inputs, prepared feeds, predictions, timing.

Plain data, shared by the model, the serving layer and the gRPC edge; the
served model itself is in served.py.
"""
from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import Union

import numpy as np

from edgeinfer.model.families.postprocess import Result
from edgeinfer.model.families.preprocess import Transform
from edgeinfer.runtime.gpu.image_job import Nv12Surface


class ModelState(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


# -- inputs -------------------------------------------------------------------

@dataclass
class EncodedImage:
    data: bytes


@dataclass
class RawPixels:
    height: int
    width: int
    pixel_format: str  # rgb, bgr, gray, rgba, bgra
    data: bytes


@dataclass
class GpuFrame:
    """A video frame NVDEC decoded that stays in GPU memory (streams with decode = "gpu"): a model
    whose input is decoded on the GPU resizes it there; any other copies it to the host first."""

    frame: Nv12Surface

    @property
    def height(self) -> int:
        return self.frame.height

    @property
    def width(self) -> int:
        return self.frame.width


@dataclass
class Tensors:
    arrays: dict[str, np.ndarray]

    @functools.cached_property
    def rows(self) -> int:
        return batch_of(self.arrays)


ModelInput = Union[EncodedImage, RawPixels, GpuFrame, Tensors]


@dataclass
class Prepared:
    """One request after decode + preprocess, ready for the runner."""

    feeds: dict[str, np.ndarray]  # with batch dimension
    transform: Transform
    image_size: tuple[int, int]  # (width, height) of what the client sent; (0, 0) for tensors
    preprocess_us: int
    batch: int = 1


@dataclass
class Timing:
    queue_us: int = 0
    preprocess_us: int = 0
    inference_us: int = 0
    postprocess_us: int = 0
    total_us: int = 0
    batch_size: int = 1  # rows of the runner call this request was part of


@dataclass
class Prediction:
    result: Result
    timing: Timing
    image_size: tuple[int, int]
    backend: str
    precision: str



def batch_of(feeds: dict[str, np.ndarray]) -> int:
    """The common leading dimension of the feeds; 1 when they disagree or are scalars."""
    sizes = {a.shape[0] for a in feeds.values() if a.ndim > 0}
    return sizes.pop() if len(sizes) == 1 else 1
