"""Variant cache: reuse across starts, keys that change with the calibration data, safe writes."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgeinfer.errors import BackendLoadError
from edgeinfer.model.precision import PrecisionError, calibration_data_hash, prepare_precision
from edgeinfer.cache.files import atomic_write
from edgeinfer.cache.variants import variant_dir


@pytest.fixture
def small_calibration(datasets, tmp_path) -> Path:
    """A calibration folder of two photos (fast to calibrate), private to one test."""
    folder = tmp_path / "cal"
    folder.mkdir()
    for name in ("chelsea.png", "coffee.png"):
        shutil.copy(datasets["calibration"] / name, folder / name)
    return folder


@pytest.mark.slow
def test_second_prepare_reuses_the_file_without_calibrating(config_factory, small_calibration, tmp_path,
                                                            progress_recorder):
    cfg = config_factory("imagenet", images=str(small_calibration), max_images=4)
    first = progress_recorder()
    a = prepare_precision(cfg, "int8", tmp_path / "cache", first)
    assert a.onnx_path.parent == tmp_path / "cache" / "onnx"
    assert first.calibrating() == ["calibrating 1/2", "calibrating 2/2"]
    stamp = a.onnx_path.stat().st_mtime_ns

    second = progress_recorder()
    b = prepare_precision(cfg, "int8", tmp_path / "cache", second)
    print(f"\nfirst start: {first.messages}\nsecond start: {second.messages}")
    assert b.onnx_path == a.onnx_path and b.calibration_hash == a.calibration_hash
    assert second.calibrating() == [] and "reusing cached int8 model" in second.messages
    assert b.onnx_path.stat().st_mtime_ns == stamp
    # Nothing but the variant (and the lock that made concurrent makers wait) in the folder:
    # no temporary files left behind.
    assert sorted(p.name for p in (tmp_path / "cache" / "onnx").iterdir()) == \
        [a.onnx_path.name, a.onnx_path.name + ".lock"]

    # New calibration images: new hash, new file, calibrated again.
    shutil.copy(small_calibration / "chelsea.png", small_calibration / "chelsea-copy.png")
    third = progress_recorder()
    c = prepare_precision(cfg, "int8", tmp_path / "cache", third)
    assert c.calibration_hash != a.calibration_hash and c.onnx_path != a.onnx_path
    assert len(third.calibrating()) == 3


def test_fp16_variant_is_cached_and_fp32_is_the_source(imagenet_cfg, tmp_path, progress_recorder):
    first = prepare_precision(imagenet_cfg, "fp16", tmp_path)
    progress = progress_recorder()
    again = prepare_precision(imagenet_cfg, "fp16", tmp_path, progress)
    assert again.onnx_path == first.onnx_path and "converting to fp16" not in progress.messages
    assert first.calibration_hash is None
    fp32 = prepare_precision(imagenet_cfg, "fp32", tmp_path)
    assert fp32.onnx_path == Path(imagenet_cfg.onnx) and fp32.calibration_hash is None


def test_calibration_hash_follows_bytes_names_bound_and_preprocessing(config_factory, small_calibration):
    base = calibration_data_hash(config_factory("imagenet", images=str(small_calibration), max_images=4))
    assert base == calibration_data_hash(config_factory("imagenet", images=str(small_calibration), max_images=4))
    assert base != calibration_data_hash(config_factory("imagenet", images=str(small_calibration), max_images=1))
    assert base != calibration_data_hash(config_factory("imagenet", images=str(small_calibration), max_images=4,
                                                        input={"mean": [0.0, 0.0, 0.0]}))
    (small_calibration / "coffee.png").write_bytes((small_calibration / "coffee.png").read_bytes() + b"\0")
    assert base != calibration_data_hash(config_factory("imagenet", images=str(small_calibration), max_images=4))
    assert calibration_data_hash(config_factory("imagenet", precision=["fp32"], images="")) is None


def test_errors_are_precision_errors_with_reasons(config_factory, tmp_path):
    cfg = config_factory("imagenet", precision=["fp32"], images="", validation="")
    with pytest.raises(PrecisionError, match="int8 needs representative images"):
        prepare_precision(cfg, "int8", tmp_path)
    with pytest.raises(BackendLoadError, match="unknown precision 'bf16'"):
        prepare_precision(cfg, "bf16", tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = config_factory("imagenet", images=str(empty))
    with pytest.raises(PrecisionError, match="no images .* or videos .* found"):
        prepare_precision(bad, "int8", tmp_path)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "model.onnx"

    def fail(tmp: Path) -> None:
        tmp.write_bytes(b"half a model")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert list(tmp_path.iterdir()) == []
    atomic_write(target, lambda tmp: tmp.write_bytes(b"whole"))
    assert target.read_bytes() == b"whole" and (target.stat().st_mode & 0o777) == 0o644


def test_unwritable_cache_falls_back_with_a_warning(tmp_path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level("WARNING"):
        folder = variant_dir(blocker)
    assert folder.is_dir() and not str(folder).startswith(str(blocker))
    assert "is not writable" in caplog.text and "rebuilt after a reboot" in caplog.text
