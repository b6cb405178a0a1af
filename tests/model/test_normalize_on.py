"""[models.input] normalize_on: the split the GPU path relies on, and the CPU fallback where it cannot run."""
from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from edgeinfer.config import InputConfig, parse_config
from edgeinfer.runtime.gpu.preprocess_kernel import Normalization, reference_normalize
from edgeinfer.model.types import ModelState
from edgeinfer.model.families.postprocess import Options
from edgeinfer.model.types import EncodedImage
from edgeinfer.model.families.preprocess import Preprocessor


@pytest.mark.parametrize("color", ["rgb", "bgr", "gray"])
@pytest.mark.parametrize("resize", ["stretch", "letterbox", "center-crop"])
def test_bgr_geometry_then_kernel_arithmetic_equals_the_cpu_path(media, color, resize):
    """Resizing in BGR and swapping channels while normalizing (what the GPU path does) gives the
    CPU path's tensor bit for bit: resize and pad act per channel, so they commute with the swap."""
    per_channel = color != "gray"
    cfg = InputConfig(color=color, resize=resize, size=[200, 160], pad_value=7, scale=1 / 255,
                      mean=[0.485, 0.456, 0.406] if per_channel else [0.449],
                      std=[0.229, 0.224, 0.225] if per_channel else [0.226])
    pre = Preprocessor(cfg)
    bgr = cv2.imread(str(media / "astronaut.png"))
    want, want_t = pre(bgr)
    img, t = pre.geometry(bgr, keep_bgr=True)
    got = reference_normalize(np.ascontiguousarray(img), Normalization.from_input_config(cfg),
                              swap_rb=color == "rgb")[0]
    assert t == want_t
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(got, want)


def test_gpu_asked_for_on_a_cpu_provider_normalizes_on_the_cpu_and_says_why(imagenet_model, media, tmp_path,
                                                                            caplog):
    with caplog.at_level(logging.WARNING, logger="edgeinfer"):
        asked = imagenet_model(tmp_path / "a", normalize_on="gpu")
    plain = imagenet_model(tmp_path / "b", normalize_on="cpu")
    try:
        assert asked.state is ModelState.READY, asked.state_reason
        assert not asked.normalize_on_gpu
        reason = asked.runner.info.details["normalize_on"]
        assert reason.startswith("cpu (gpu asked for: needs ONNX Runtime's CUDA provider"), reason
        assert any("normalize_on" in r.getMessage() for r in caplog.records)
        assert "normalize on cpu (gpu asked for: needs ONNX Runtime's CUDA provider" in asked.state_reason
        assert "normalize on" not in plain.state_reason
        # The image input keeps its float NCHW contract, and the answers are the CPU path's.
        assert asked.runner.inputs[0].dtype == np.float32
        image = EncodedImage((media / "coffee.png").read_bytes())
        a, b = asked.predict(image, Options()), plain.predict(image, Options())
        assert [c.index for c in a.result.classes] == [c.index for c in b.result.classes]
        assert [c.score for c in a.result.classes] == [c.score for c in b.result.classes]
    finally:
        asked.unload()
        plain.unload()


def test_normalize_on_takes_only_cpu_or_gpu(classifier_onnx, tmp_path):
    from edgeinfer.config import ConfigError

    with pytest.raises(ConfigError, match="normalize_on"):
        parse_config({"models": [{"name": "m", "onnx": str(classifier_onnx),
                                  "input": {"normalize_on": "tpu"}}]}, source="t")
