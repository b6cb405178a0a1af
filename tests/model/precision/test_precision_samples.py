"""Calibration/validation sets: which images and frames are taken, through the serving preprocessing."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from edgeinfer.model.families.preprocess import Preprocessor
from edgeinfer.model.precision import PrecisionError
from edgeinfer.model.precision.samples import _evenly, load_samples, media_files


def test_evenly_spaced_indices():
    assert _evenly(120, 24) == list(range(0, 120, 5))
    assert _evenly(3, 10) == [0, 1, 2]
    assert _evenly(10, 0) == []


def test_stills_first_then_video_frames(datasets, imagenet_cfg):
    samples = load_samples(datasets["calibration"], imagenet_cfg.input, 26)
    names = [s.name for s in samples]
    assert names[:2] == ["chelsea.png", "coffee.png"]
    assert names[2:] == [f"carphone_pristine.mp4#{i}" for i in range(0, 120, 5)]
    assert all(s.tensor.shape == (3, 224, 224) and s.tensor.dtype == np.float32 for s in samples)


def test_samples_use_the_serving_preprocessor(datasets, faces_cfg):
    (sample,) = load_samples(datasets["validation"] / "astronaut.png", faces_cfg.input, 5)
    pre = Preprocessor(faces_cfg.input)
    expected, transform = pre(pre.decode((datasets["validation"] / "astronaut.png").read_bytes()))
    np.testing.assert_array_equal(sample.tensor, expected)
    assert sample.transform == transform and (transform.width, transform.height) == (512, 512)


def test_video_file_alone_and_a_small_budget(datasets, imagenet_cfg):
    video = datasets["calibration"] / "carphone_pristine.mp4"
    assert [s.name for s in load_samples(video, imagenet_cfg.input, 4)] == [
        f"carphone_pristine.mp4#{i}" for i in (0, 30, 60, 90)]
    # More stills than the budget: an evenly spaced subset of them, no frames.
    names = [s.name for s in load_samples(datasets["validation"], imagenet_cfg.input, 2)]
    assert len(names) == 2 and all(n.endswith((".png", ".jpg")) for n in names)


def test_unreadable_images_are_skipped_and_an_empty_set_refused(datasets, imagenet_cfg, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(PrecisionError, match="no readable calibration image"):
        load_samples(tmp_path, imagenet_cfg.input, 8)
    shutil.copy(datasets["calibration"] / "coffee.png", tmp_path / "coffee.png")
    assert [s.name for s in load_samples(tmp_path, imagenet_cfg.input, 8)] == ["coffee.png"]
    assert media_files(tmp_path)[1] == []
