"""The NVRTC kernel normalizes exactly like the CPU path (model/families/preprocess.py)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgeinfer.config import InputConfig
from edgeinfer.runtime.gpu.preprocess_kernel import Normalization, reference_normalize
from edgeinfer.model.families.preprocess import Preprocessor

pytestmark = pytest.mark.gpu

CASES = [
    # (color, mean, std, scale): EfficientNet-Lite0, ImageNet-style, CenterFace (raw 0..255), gray
    ("rgb", [127.0, 127.0, 127.0], [128.0, 128.0, 128.0], 1.0),
    ("rgb", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 1 / 255),
    ("bgr", [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], 1.0),
]


def _cpu_path(bgr, color, mean, std, scale):
    h, w = bgr.shape[:2]
    cfg = InputConfig(color=color, resize="stretch", size=[w, h], mean=mean, std=std, scale=scale)
    tensor, _ = Preprocessor(cfg)(bgr)
    return tensor, Normalization.from_input_config(cfg)


@pytest.mark.parametrize("color,mean,std,scale", CASES)
def test_reference_is_the_cpu_pipeline(media, color, mean, std, scale):
    # Runs without a GPU: the kernel is checked against this reference below.
    bgr = cv2.imread(str(media / "chelsea.png"))
    tensor, norm = _cpu_path(bgr, color, mean, std, scale)
    assert np.array_equal(reference_normalize(bgr, norm, swap_rb=color == "rgb")[0], tensor)


@pytest.mark.parametrize("color,mean,std,scale", CASES)
def test_kernel_matches_cpu_on_real_photos(cuda_device, stream, media, color, mean, std, scale):
    from edgeinfer.runtime.gpu.preprocess_kernel import PreprocessKernel

    kernel = PreprocessKernel(cuda_device)
    try:
        for name in ("astronaut.png", "coffee.png", "chelsea.png"):
            bgr = cv2.imread(str(media / name))
            tensor, norm = _cpu_path(bgr, color, mean, std, scale)
            got = kernel.normalize(bgr, norm, swap_rb=color == "rgb", stream=stream)[0]
            assert got.shape == tensor.shape
            assert np.max(np.abs(got - tensor)) <= 1e-5, name
    finally:
        kernel.close()


def test_kernel_fills_a_batch_on_random_inputs(cuda_device, stream):
    from edgeinfer.runtime.gpu.preprocess_kernel import PreprocessKernel

    rng = np.random.default_rng()
    imgs = rng.integers(0, 256, (3, 37, 53, 3), dtype=np.uint8)  # odd sizes: edge blocks
    norm = Normalization.from_config(1 / 255, [0.5, 0.4, 0.3], [0.2, 0.3, 0.4])
    kernel = PreprocessKernel(cuda_device)
    try:
        got = kernel.normalize(imgs, norm, swap_rb=True, stream=stream)
    finally:
        kernel.close()
    assert np.isfinite(got).all()
    assert np.max(np.abs(got - reference_normalize(imgs, norm, swap_rb=True))) <= 1e-5
