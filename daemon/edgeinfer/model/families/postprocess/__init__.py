"""Postprocessing per model family, picked from a plain table by config `task`.

A postprocessor gets one item's outputs (batch dimension of 1, in the model's
output order) and the preprocessing Transform, and returns a `Result` whose
boxes are in the original image's pixels.
"""
from __future__ import annotations

from edgeinfer.model.families.postprocess.base import ClassScore, Detection, Options, Postprocessor, Result
from edgeinfer.model.families.postprocess.centerface import CenterFaceDecoder
from edgeinfer.model.families.postprocess.classify import Classifier
from edgeinfer.model.families.postprocess.raw import RawOutputs
from edgeinfer.model.families.postprocess.yolov8 import YoloV8Decoder

POSTPROCESSORS: dict[str, type[Postprocessor]] = {
    "classification": Classifier,
    "centerface": CenterFaceDecoder,
    "yolov8": YoloV8Decoder,
    "raw": RawOutputs,
}


def postprocessor_for(cfg, labels: list[str]) -> Postprocessor:
    return POSTPROCESSORS[cfg.task](cfg, labels)


__all__ = ["POSTPROCESSORS", "ClassScore", "Detection", "Options", "Postprocessor", "Result", "postprocessor_for"]
