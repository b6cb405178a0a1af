"""Optimization-profile policy, derived from TensorSpecs and the model config."""
from __future__ import annotations

import numpy as np
import pytest

from edgeinfer.runtime.base import TensorSpec
from edgeinfer.runtime.tensorrt.profiles import (ProfileDefaults, ProfileError, ShapeRange, derive_profiles,
                                                  max_batch_of, profiles_to_json, select_profile)
from edgeinfer.config import ProfileConfig

F32 = np.dtype(np.float32)


def spec(name, *shape):
    return TensorSpec(name, F32, tuple(shape))


def test_static_model_needs_no_profile():
    profiles, notes = derive_profiles([spec("x", 1, 3, 224, 224)], [], ProfileDefaults(max_batch=8))
    assert profiles == [] and notes == []


@pytest.mark.parametrize("max_batch, preferred, expect", [
    (1, None, (1, 1, 1)),
    (32, None, (1, 32, 32)),
    (32, 8, (1, 8, 32)),
    (4, 16, (1, 4, 4)),  # opt never exceeds max
])
def test_dynamic_batch_defaults_follow_batching(max_batch, preferred, expect):
    d = ProfileDefaults(max_batch=max_batch, opt_batch=preferred)
    (profile,), notes = derive_profiles([spec("images", -1, 3, 224, 224)], [], d)
    rng = profile["images"]
    assert (rng.min[0], rng.opt[0], rng.max[0]) == expect
    assert rng.min[1:] == rng.max[1:] == (3, 224, 224)
    assert "no [tensorrt.profiles] configured" in notes[0] and f"max_batch={max_batch}" in notes[0]


def test_from_model_reads_batching_and_input(model_cfg):
    m = model_cfg(batching={"max_batch": 16, "preferred_batch_sizes": [4, 8]},
                  input={"size": [320, 240], "layout": "NHWC", "tensor": "img"})
    d = ProfileDefaults.from_model(m)
    assert (d.max_batch, d.opt_batch, d.image_size, d.layout, d.image_input) == (16, 8, (320, 240), "NHWC", "img")


@pytest.mark.parametrize("layout, shape, expect", [
    ("NCHW", (-1, 3, -1, -1), (3, 480, 640)),
    ("NHWC", (-1, -1, -1, 3), (480, 640, 3)),
])
def test_dynamic_image_size_comes_from_input_size(layout, shape, expect):
    d = ProfileDefaults(max_batch=2, image_size=(640, 480), layout=layout)
    (profile,), notes = derive_profiles([spec("input.1", *shape)], [], d)
    assert profile["input.1"].max == (2,) + expect
    assert "from [input] size" in notes[0]


def test_unguessable_dynamic_dim_asks_for_a_profile():
    with pytest.raises(ProfileError, match=r"'tokens' has dynamic dimension 1.*add \[\[models"):
        derive_profiles([spec("img", -1, 3, 8, 8), spec("tokens", -1, -1)], [], ProfileDefaults())


def test_configured_profiles_are_used_and_checked():
    cfg = [ProfileConfig(min={"x": [1, 3, 8, 8]}, opt={"x": [8, 3, 8, 8]}, max={"x": [32, 3, 8, 8]}),
           ProfileConfig(min={"x": [33, 3, 8, 8]}, opt={"x": [64, 3, 8, 8]}, max={"x": [64, 3, 8, 8]})]
    profiles, notes = derive_profiles([spec("x", -1, 3, 8, 8)], cfg, ProfileDefaults())
    assert profiles_to_json(profiles) == [
        {"x": [[1, 3, 8, 8], [8, 3, 8, 8], [32, 3, 8, 8]]},
        {"x": [[33, 3, 8, 8], [64, 3, 8, 8], [64, 3, 8, 8]]}]
    assert notes == []
    assert select_profile(profiles, {"x": (40, 3, 8, 8)}) == 1
    assert select_profile(profiles, {"x": (8, 3, 8, 8)}) == 0
    assert select_profile(profiles, {"x": (65, 3, 8, 8)}) is None
    assert max_batch_of(profiles, [spec("x", -1, 3, 8, 8)]) == 64


@pytest.mark.parametrize("prof, message", [
    (ProfileConfig(min={"y": [1]}, opt={"y": [1]}, max={"y": [1]}), r"unknown input\(s\) \['y'\]"),
    (ProfileConfig(min={"x": [1, 3, 8]}, opt={"x": [1, 3, 8]}, max={"x": [1, 3, 8]}), "has rank 3"),
    (ProfileConfig(min={"x": [1, 4, 8, 8]}, opt={"x": [1, 4, 8, 8]}, max={"x": [1, 4, 8, 8]}),
     "fixed dimension 1 = 3"),
    (ProfileConfig(min={"x": [4, 3, 8, 8]}, opt={"x": [2, 3, 8, 8]}, max={"x": [8, 3, 8, 8]}), "min <= opt <= max"),
])
def test_bad_configured_profiles_are_explained(prof, message):
    with pytest.raises(ProfileError, match=message):
        derive_profiles([spec("x", -1, 3, 8, 8)], [prof], ProfileDefaults())


def test_input_missing_from_configured_profile_gets_defaults_and_a_note():
    cfg = [ProfileConfig(min={"a": [1, 2]}, opt={"a": [2, 2]}, max={"a": [4, 2]})]
    (profile,), notes = derive_profiles([spec("a", -1, 2), spec("b", -1, 5)], cfg, ProfileDefaults(max_batch=4))
    assert profile["b"] == ShapeRange((1, 5), (4, 5), (4, 5))
    assert "does not name input 'b'" in notes[0]
