"""[models.input] reduced_decode: big JPEGs decoded at 1/2, 1/4 or 1/8 scale, never below what the
resize needs, with coordinates still in the sent image's pixels and the same answers from a real model."""
from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from edgeinfer.config import InputConfig
from edgeinfer.model.types import EncodedImage, ModelState
from edgeinfer.model.families.postprocess import Options
from edgeinfer.model.families.preprocess import Preprocessor

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "camera.png")


def _jpeg(img: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def _with_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with an EXIF APP1 segment holding only the orientation tag (6 = rotate 90 clockwise)."""
    tiff = (b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
            + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0))
    app1 = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


@pytest.fixture(scope="module")
def frame(media) -> np.ndarray:
    """A camera-size (1920x1080) frame made from a real photo."""
    return cv2.resize(cv2.imread(str(media / "coffee.png")), (1920, 1080), interpolation=cv2.INTER_CUBIC)


@pytest.mark.parametrize("resize, size, factor", [
    ("center-crop", [224, 224], 4),   # 1080 rows need 256 after the resize: 1080 / 4 = 270
    ("letterbox", [640, 480], 2),     # 1/3 scale needed: 1/2 decode, then the resize
    ("stretch", [320, 320], 2),       # 1080 -> 320 rows: 1/2 (540), not 1/4 (270)
    ("stretch", [1920, 1080], 1),     # the model takes the full size
])
def test_the_largest_reduction_that_keeps_the_resize_a_shrink(frame, resize, size, factor):
    pre = Preprocessor(InputConfig(resize=resize, size=size))
    img, reduced = pre.decode_for_model(_jpeg(frame))
    assert (reduced.factor if reduced else 1) == factor
    assert img.shape[:2] == (-(-1080 // factor), -(-1920 // factor))
    # Never decoded smaller than the resize's output: the resize only ever shrinks it.
    resized, _ = pre.geometry(img, reduced=reduced)
    assert resized.shape[:2] == (size[1], size[0])
    assert pre._resize_factor(img.shape[1], img.shape[0]) <= 1.0 + 1e-9


def test_off_png_and_small_jpegs_decode_in_full(frame, media):
    cfg = InputConfig(resize="center-crop", size=[224, 224])
    assert Preprocessor(InputConfig(resize="center-crop", size=[224, 224], reduced_decode=False)) \
        .decode_for_model(_jpeg(frame))[1] is None
    png = cv2.imencode(".png", frame)[1].tobytes()
    img, reduced = Preprocessor(cfg).decode_for_model(png)
    assert reduced is None and img.shape[:2] == (1080, 1920)
    small = _jpeg(cv2.imread(str(media / "coffee.png")))  # 600x400: 400 rows, 256 needed
    assert Preprocessor(cfg).decode_for_model(small)[1] is None


@pytest.mark.parametrize("orientation", [1, 6])
@pytest.mark.parametrize("resize, size", [("center-crop", [224, 224]), ("letterbox", [640, 480]),
                                          ("stretch", [320, 320])])
def test_coordinates_map_to_the_sent_pixels_as_a_full_decode_does(frame, resize, size, orientation):
    data = _with_orientation(_jpeg(frame), orientation)
    on = Preprocessor(InputConfig(resize=resize, size=size, color="rgb"))
    off = Preprocessor(InputConfig(resize=resize, size=size, color="rgb", reduced_decode=False))
    img, reduced = on.decode_for_model(data)
    assert reduced is not None
    full, _ = off.decode_for_model(data)
    got, t_got = on(img, reduced=reduced)
    want, t_want = off(full)
    # EXIF orientation 6 turns the 1920x1080 frame upright: 1080 wide, 1920 high.
    assert (t_got.width, t_got.height) == (t_want.width, t_want.height) == (full.shape[1], full.shape[0])
    assert (t_got.width, t_got.height) == ((1080, 1920) if orientation == 6 else (1920, 1080))
    boxes = np.array([[0, 0, size[0], size[1]], [31.5, 17.25, 120.0, 200.5]], np.float32)
    np.testing.assert_allclose(t_got.boxes_to_original(boxes), t_want.boxes_to_original(boxes), atol=1e-3)
    # The pixels: libjpeg's block averaging against a full decode resized, a few levels apart.
    assert got.shape == want.shape
    assert np.abs(got.astype(np.float32) - want.astype(np.float32)).mean() < 3.0


def test_a_real_classifier_answers_the_same_on_camera_size_photos(imagenet_model, media, tmp_path):
    on, off = imagenet_model(tmp_path / "on", reduced_decode=True), imagenet_model(tmp_path / "off", reduced_decode=False)
    try:
        assert on.state is ModelState.READY and off.state is ModelState.READY, (on.state_reason, off.state_reason)
        for name in PHOTOS:
            photo = cv2.resize(cv2.imread(str(media / name)), (1920, 1280), interpolation=cv2.INTER_CUBIC)
            item = EncodedImage(_jpeg(photo))
            prepared = on.prepare(item)
            assert prepared.image_size == (1920, 1280)
            got = on.predict(item, Options()).result.classes
            want = off.predict(item, Options()).result.classes
            assert got[0].label == want[0].label, (name, got[0], want[0])
            assert abs(got[0].score - want[0].score) < 0.05, (name, got[0], want[0])
    finally:
        on.unload()
        off.unload()
