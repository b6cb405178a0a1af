"""Fixtures for the precision tests: real photos and video frames, split into
calibration and validation sets, and the two real models' configs.

Split (disjoint by construction):
- calibration: chelsea.png, coffee.png and carphone_pristine.mp4 itself;
  with max_images=26 the sampler takes both photos and 24 evenly spaced
  frames (0, 5, ..., 115) from the video.
- validation: astronaut.png, camera.png, rocket.jpg and 23 frames written out
  as PNG at indices 2, 7, ..., 112 (never a calibration frame).
Preprocessing is the one the shipped dev config serves with.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from testkit.precision_data import CAL_STILLS, VAL_FRAMES, VAL_STILLS, VIDEO, make_config, model_table


@pytest.fixture(scope="session")
def datasets(media, tmp_path_factory) -> dict[str, Path]:
    from edgeinfer.model.families.preprocess import cv2

    root = tmp_path_factory.mktemp("precision-data")
    cal, val = root / "calibration", root / "validation"
    cal.mkdir()
    val.mkdir()
    for name in CAL_STILLS + (VIDEO,):
        shutil.copy(media / name, cal / name)
    for name in VAL_STILLS:
        shutil.copy(media / name, val / name)
    cap = cv2.VideoCapture(str(media / VIDEO))
    index = 0
    wanted = set(VAL_FRAMES)
    while index <= max(VAL_FRAMES):
        ok, frame = cap.read()
        assert ok, f"{VIDEO} ended at frame {index}"
        if index in wanted:
            cv2.imwrite(str(val / f"frame{index:03d}.png"), frame)
        index += 1
    cap.release()
    return {"calibration": cal, "validation": val, "root": root}


@pytest.fixture(scope="session")
def config_factory(classifier_onnx, centerface_onnx, datasets):
    """config_factory("imagenet" | "faces", precision=[...], input={...}, postprocess={...},
    **calibration_overrides) -> ModelConfig."""

    def make(kind: str, precision: list | None = None, input: dict | None = None,
             postprocess: dict | None = None, **calibration):
        onnx_path = classifier_onnx if kind == "imagenet" else centerface_onnx
        table = model_table(kind, onnx_path, datasets, **calibration)
        if precision is not None:
            table["precision"] = precision
        table["input"].update(input or {})
        table["postprocess"].update(postprocess or {})
        return make_config(table, datasets["root"])

    return make


@pytest.fixture(scope="session")
def val_stills() -> tuple[str, ...]:
    return VAL_STILLS


@pytest.fixture(scope="session")
def imagenet_cfg(classifier_onnx, datasets):
    return make_config(model_table("imagenet", classifier_onnx, datasets), datasets["root"])


@pytest.fixture(scope="session")
def faces_cfg(centerface_onnx, datasets):
    return make_config(model_table("faces", centerface_onnx, datasets), datasets["root"])


@pytest.fixture(scope="session")
def variant_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("precision-cache")


@pytest.fixture
def progress_recorder():
    """A fresh Progress per call: progress_recorder() -> Progress."""
    return Progress


class Progress:
    """A progress callback that remembers what it was told."""

    def __init__(self):
        self.messages: list[str] = []

    def __call__(self, message: str) -> None:
        self.messages.append(message)

    def calibrating(self) -> list[str]:
        return [m for m in self.messages if m.startswith("calibrating")]


@pytest.fixture(scope="session")
def prepared(imagenet_cfg, faces_cfg, variant_cache):
    """The four real variants, made once: {(model, precision): (PreparedModel, Progress)}."""
    from edgeinfer.model.precision import prepare_precision

    out = {}
    for cfg in (imagenet_cfg, faces_cfg):
        for precision in ("fp16", "int8"):
            progress = Progress()
            out[(cfg.name, precision)] = (prepare_precision(cfg, precision, variant_cache, progress), progress)
    return out
