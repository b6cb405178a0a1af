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

CAL_STILLS = ("chelsea.png", "coffee.png")
VAL_STILLS = ("astronaut.png", "camera.png", "rocket.jpg")
VIDEO = "carphone_pristine.mp4"
MAX_IMAGES = 26
VAL_FRAMES = [2 + 5 * i for i in range(23)]  # 2, 7, ..., 112


@pytest.fixture(scope="session")
def datasets(media, tmp_path_factory) -> dict[str, Path]:
    from edgeinfer.pipeline.preprocess import cv2

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


def model_table(kind: str, onnx_path: Path, data: dict[str, Path], **calibration) -> dict:
    """A [[models]] table like configs/dev.toml's, with calibration data."""
    cal = {"images": str(data["calibration"]), "validation": str(data["validation"]),
           "max_images": MAX_IMAGES}
    cal.update(calibration)
    if kind == "imagenet":
        return {
            "name": "imagenet", "onnx": str(onnx_path), "precision": ["int8", "fp16", "fp32"],
            "input": {"color": "rgb", "resize": "center-crop", "size": [224, 224],
                      "mean": [127.0, 127.0, 127.0], "std": [128.0, 128.0, 128.0]},
            "postprocess": {"task": "classification", "labels": str(onnx_path.parent / "imagenet-labels.txt"),
                            "top_k": 5},
            "calibration": cal,
        }
    return {
        "name": "faces", "onnx": str(onnx_path), "precision": ["int8", "fp16", "fp32"],
        "input": {"color": "rgb", "resize": "letterbox", "size": [640, 480], "pad_value": 0},
        "postprocess": {"task": "centerface", "score_threshold": 0.5, "nms_iou_threshold": 0.3},
        "calibration": cal,
    }


def make_config(table: dict, base_dir: Path):
    """A validated ModelConfig, through the same parser the daemon uses."""
    from edgeinfer.config import parse_config

    return parse_config({"models": [table]}, base_dir=base_dir).models[0]


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
    from edgeinfer.precision import prepare_precision

    out = {}
    for cfg in (imagenet_cfg, faces_cfg):
        for precision in ("fp16", "int8"):
            progress = Progress()
            out[(cfg.name, precision)] = (prepare_precision(cfg, precision, variant_cache, progress), progress)
    return out
