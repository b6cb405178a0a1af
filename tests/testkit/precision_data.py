"""The precision tests' data split and model tables (see tests/model/precision/conftest.py)."""
from __future__ import annotations

from pathlib import Path

CAL_STILLS = ("chelsea.png", "coffee.png")
VAL_STILLS = ("astronaut.png", "camera.png", "rocket.jpg")
VIDEO = "carphone_pristine.mp4"
MAX_IMAGES = 26
VAL_FRAMES = [2 + 5 * i for i in range(23)]  # 2, 7, ..., 112



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
