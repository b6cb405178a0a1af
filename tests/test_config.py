"""Config errors: one test per kind of mistake; every message names file, table and key."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgeinfer.config import load_config
from edgeinfer.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

GOOD = """
[server]
listen = "127.0.0.1:50051"

[[models]]
name = "m"
onnx = "model.onnx"

[models.input]
size = [64, 48]

[models.postprocess]
task = "classification"
"""


@pytest.fixture
def write(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"onnx")

    def _write(text: str) -> Path:
        p = tmp_path / "edgeinfer.toml"
        p.write_text(text)
        return p

    return _write


def _error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert msg.startswith(str(path)), msg
    return msg


def test_good_config_loads_with_paths_relative_to_the_file(write, tmp_path):
    cfg = load_config(write(GOOD))
    m = cfg.model("m")
    assert m.onnx == str(tmp_path / "model.onnx")
    assert m.input.size == [64, 48] and m.backend_order == ["tensorrt", "onnxruntime"]
    assert cfg.server.workers == 4


def test_unknown_key(write):
    msg = _error(write(GOOD.replace('size = [64, 48]', 'size = [64, 48]\nsizee = 3')))
    assert "[models.m.input] sizee: unknown key" in msg and "size" in msg


def test_onnxruntime_spinning_takes_true_or_false(write):
    msg = _error(write(GOOD + '\n[models.onnxruntime]\nintra_op_spinning = "no"\n'))
    assert "intra_op_spinning" in msg and "true or false" in msg, msg


def test_unknown_top_level_table(write):
    assert "servr: unknown key" in _error(write(GOOD + "\n[servr]\nlisten='x'\n"))


def test_wrong_type(write):
    msg = _error(write(GOOD.replace('listen = "127.0.0.1:50051"', "listen = 50051")))
    assert "[server] listen: expected a string, got 50051" in msg


def test_bad_size(write):
    msg = _error(write(GOOD.replace("size = [64, 48]", "size = [64]")))
    assert "[models.m.input] size: expected a list of 2 positive integers [width, height], got [64]" in msg


def test_bad_enum(write):
    msg = _error(write(GOOD.replace('task = "classification"', 'task = "segmentation"')))
    assert "[models.m.postprocess] task: expected one of 'classification', 'centerface', 'yolov8', 'raw'" in msg


def test_out_of_range(write):
    msg = _error(write(GOOD.replace('task = "classification"', 'task = "yolov8"\nscore_threshold = 1.5')))
    assert "[models.m.postprocess] score_threshold: expected a number between 0 and 1, got 1.5" in msg


def test_missing_required_key(write):
    msg = _error(write(GOOD.replace('onnx = "model.onnx"\n', "")))
    assert "[models.m] onnx: missing required key" in msg


def test_missing_onnx_file(write):
    msg = _error(write(GOOD.replace("model.onnx", "absent.onnx")))
    assert "[models.m] onnx: file not found" in msg and "absent.onnx" in msg


def test_unknown_backend(write):
    msg = _error(write(GOOD.replace('onnx = "model.onnx"', 'onnx = "model.onnx"\nbackends = ["openvino"]')))
    assert "[models.m] backends: unknown backend 'openvino'" in msg


def test_unknown_precision(write):
    msg = _error(write(GOOD.replace('onnx = "model.onnx"', 'onnx = "model.onnx"\nprecision = ["fp8"]')))
    assert "[models.m] precision: unknown precision 'fp8'" in msg


def test_int8_needs_calibration_images(write):
    msg = _error(write(GOOD.replace('onnx = "model.onnx"', 'onnx = "model.onnx"\nprecision = ["int8", "fp32"]')))
    assert "[models.m.calibration] images: INT8 needs representative images" in msg


def test_fp16_needs_validation_images(write):
    msg = _error(write(GOOD.replace('onnx = "model.onnx"', 'onnx = "model.onnx"\nprecision = ["fp16", "fp32"]')))
    assert "[models.m.calibration] validation: FP16 is gated against FP32 and needs validation images" in msg


def test_duplicate_model_name(write):
    msg = _error(write(GOOD + '\n[[models]]\nname = "m"\nonnx = "model.onnx"\n'))
    assert "[models.m] name: a model of this name is already configured" in msg


def test_models_as_single_table(write):
    msg = _error(write('[models]\nname = "m"\n'))
    assert "models: expected [[models]] entries" in msg


def test_profile_min_opt_max_order(write):
    text = GOOD + """
[[models.tensorrt.profiles]]
min = { input = [1, 3, 224, 224] }
opt = { input = [8, 3, 224, 224] }
max = { input = [4, 3, 224, 224] }
"""
    assert "expected min <= opt <= max" in _error(write(text))


def test_metrics_listen_must_be_host_port(write):
    msg = _error(write('[metrics]\nlisten = "localhost"\n' + GOOD))
    assert "[metrics] listen: expected host:port (e.g. 127.0.0.1:9400), got 'localhost'" in msg
    # Metrics off: the address is not used, so not checked.
    load_config(write('[metrics]\nenabled = false\nlisten = "localhost"\n' + GOOD))


def test_gpu_normalization_needs_float32_nchw(write):
    msg = _error(write(GOOD.replace("size = [64, 48]", 'size = [64, 48]\nlayout = "NHWC"\nnormalize_on = "gpu"')))
    assert "[models.m.input] normalize_on: the GPU kernel writes float32 NCHW; this input is float32 NHWC" in msg
    load_config(write(GOOD.replace("size = [64, 48]", 'size = [64, 48]\nnormalize_on = "gpu"')))


def test_not_toml(write):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write("[server\nlisten="))


def test_check_config_cli_exit_codes(write):
    good = write(GOOD)
    ok = subprocess.run([sys.executable, "-m", "edgeinfer.cli", "check-config", str(good)],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "OK (1 model(s): m)" in ok.stdout
    bad = good.with_name("bad.toml")
    bad.write_text(GOOD.replace("size = [64, 48]", "size = 3"))
    res = subprocess.run([sys.executable, "-m", "edgeinfer.cli", "check-config", str(bad)],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert "[models.m.input] size: expected a list of integers, got 3" in res.stderr


def test_shipped_configs_are_valid():
    for path in sorted((ROOT / "configs").glob("*.toml")):
        load_config(path, check_files=False)
