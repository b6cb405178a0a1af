"""Result types and the postprocessor base class."""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from edgeinfer.model.families.preprocess import IDENTITY, Transform


@dataclass
class ClassScore:
    index: int
    label: str
    score: float


@dataclass
class Detection:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in original image pixels
    score: float
    class_index: int = 0
    label: str = ""
    landmarks: Optional[np.ndarray] = None  # [K, 2] x, y in original image pixels


@dataclass
class Result:
    classes: list[ClassScore] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Options:
    """Per-request overrides (0/None = the model's configured default). Frozen: one default is shared."""

    top_k: int = 0
    score_threshold: Optional[float] = None
    nms_iou_threshold: Optional[float] = None
    include_raw_outputs: bool = False


class Postprocessor(abc.ABC):
    default_score_threshold = 0.5

    def __init__(self, cfg, labels: list[str]):
        self.cfg = cfg
        self.labels = labels

    def score_threshold(self, options: Options) -> float:
        if options.score_threshold is not None:
            return options.score_threshold
        if self.cfg.score_threshold is not None:
            return self.cfg.score_threshold
        return self.default_score_threshold

    def nms_threshold(self, options: Options) -> float:
        return options.nms_iou_threshold if options.nms_iou_threshold is not None else self.cfg.nms_iou_threshold

    def __call__(self, outputs: dict[str, np.ndarray], transform: Transform = IDENTITY,
                 options: Optional[Options] = None) -> Result:
        options = options or Options()
        result = self.decode(outputs, transform, options)
        if options.include_raw_outputs and not result.outputs:
            result.outputs = dict(outputs)
        return result

    def rows(self, outputs: dict[str, np.ndarray], transforms: Sequence[Transform],
             options: Sequence[Options]) -> list[Result]:
        """Postprocess a batch of single-row items: row i with transforms[i] and options[i].

        Equal to calling this postprocessor on each row alone. A batching slot
        postprocesses every row of its batch while holding the GIL, so families
        that can work on all rows at once override decode_rows.
        """
        results = self.decode_rows(outputs, transforms, options)
        for i, (result, opts) in enumerate(zip(results, options)):
            if opts.include_raw_outputs and not result.outputs:
                result.outputs = {k: v[i:i + 1] for k, v in outputs.items()}
        return results

    def decode_rows(self, outputs: dict[str, np.ndarray], transforms: Sequence[Transform],
                    options: Sequence[Options]) -> list[Result]:
        return [self.decode({k: v[i:i + 1] for k, v in outputs.items()}, t, o)
                for i, (t, o) in enumerate(zip(transforms, options))]

    @abc.abstractmethod
    def decode(self, outputs: dict[str, np.ndarray], transform: Transform, options: Options) -> Result: ...
