"""OpenCV preprocessing: header sniffing, resize modes and their inverse, normalization, layout."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgeinfer.config import InputConfig
from edgeinfer.errors import InvalidInput
from edgeinfer.model.families.preprocess import Preprocessor, image_size


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".webp"])
@pytest.mark.parametrize("size", [(37, 23), (640, 480)])
def test_header_size_matches_the_real_image(ext, size):
    w, h = size
    img = np.random.default_rng(1).integers(0, 255, (h, w, 3), np.uint8)
    ok, buf = cv2.imencode(ext, img)
    assert ok
    assert image_size(buf.tobytes()) == (w, h)


def test_lossless_webp_header():
    img = np.zeros((31, 57, 3), np.uint8)
    ok, buf = cv2.imencode(".webp", img, [cv2.IMWRITE_WEBP_QUALITY, 101])  # >100 = lossless (VP8L)
    assert ok and buf.tobytes()[12:16] == b"VP8L"
    assert image_size(buf.tobytes()) == (57, 31)


@pytest.mark.parametrize("mode", ["stretch", "letterbox", "center-crop"])
def test_transform_maps_model_pixels_back_to_the_original(mode):
    pre = Preprocessor(InputConfig(resize=mode, size=[64, 48]))
    img = np.zeros((300, 200, 3), np.uint8)
    # A white square at x 80..120, y 140..180 in the original.
    img[140:180, 80:120] = 255
    tensor, tf = pre(img)
    assert tensor.shape == (3, 48, 64)
    mask = tensor[0] > 127
    ys, xs = np.nonzero(mask)
    box = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
    back = tf.boxes_to_original(box)[0]
    np.testing.assert_allclose(back, [80, 140, 120, 180], atol=3 / min(tf.scale_x, tf.scale_y) * 0.5 + 2)


def test_normalization_and_layouts():
    cfg = InputConfig(size=[2, 2], mean=[10, 20, 30], std=[2, 4, 5], scale=1.0, color="bgr", layout="NHWC")
    img = np.full((2, 2, 3), 50, np.uint8)
    tensor, _ = Preprocessor(cfg)(img)
    assert tensor.shape == (2, 2, 3)
    np.testing.assert_allclose(tensor[0, 0], [(50 - 10) / 2, (50 - 20) / 4, (50 - 30) / 5])
    rgb, _ = Preprocessor(InputConfig(size=[2, 2], color="rgb"))(np.dstack([np.full((2, 2), v, np.uint8) for v in (1, 2, 3)]))
    assert rgb.shape == (3, 2, 2) and rgb[:, 0, 0].tolist() == [3, 2, 1]  # BGR in, RGB planes out
    gray, _ = Preprocessor(InputConfig(size=[2, 2], color="gray", mean=[0], std=[1]))(img)
    assert gray.shape == (1, 2, 2)
    u8, _ = Preprocessor(InputConfig(size=[2, 2], dtype="uint8"))(img)
    assert u8.dtype == np.uint8


def test_limits_refuse_before_decoding():
    pre = Preprocessor(InputConfig(), max_pixels=100 * 100, max_bytes=1 << 20)
    ok, buf = cv2.imencode(".png", np.zeros((101, 100, 3), np.uint8))
    with pytest.raises(InvalidInput, match="101 = 10100 pixels, over the limit of 10000"):
        pre.decode(buf.tobytes())
    with pytest.raises(InvalidInput, match="over the limit of 1048576"):
        pre.decode(b"\x89PNG\r\n\x1a\n" + b"\x00" * (1 << 20))
    with pytest.raises(InvalidInput, match="empty"):
        pre.decode(b"")
    with pytest.raises(InvalidInput, match="pixel format must be one of"):
        pre.from_raw(2, 2, "yuv", b"\x00" * 12)
