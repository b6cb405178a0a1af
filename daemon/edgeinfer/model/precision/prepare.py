"""prepare_precision: the ONNX file a backend should load for one precision.

One path for every backend: FP16 and INT8 are ONNX -> ONNX transforms (FP16
weights with FP32 I/O; explicit Q/DQ INT8), so TensorRT 10, TensorRT 11
(strongly typed: no builder precision flags) and ONNX Runtime all load the
same kind of file, and the engine cache keys on that file's bytes.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Optional

from edgeinfer.config import PRECISIONS, ModelConfig
from edgeinfer.model.precision.base import PrecisionError, PreparedModel, fixed_batch, read_graph_io
from edgeinfer.cache.files import FileLock, atomic_write
from edgeinfer.cache.files import file_sha256
from edgeinfer.cache.variants import touch_variant, variant_dir, variant_key, variant_path
from edgeinfer.model.precision.fp16 import Fp16Settings, convert_fp16
from edgeinfer.model.precision.int8 import Int8Settings, quantize_int8
from edgeinfer.model.precision.samples import calibration_data_hash, load_samples

log = logging.getLogger(__name__)


def prepare_precision(cfg: ModelConfig, precision: str, cache_dir: Path,
                      progress: Callable[[str], None] = lambda _m: None, *,
                      fp16: Optional[Fp16Settings] = None,
                      int8: Optional[Int8Settings] = None) -> PreparedModel:
    """Make (or reuse) the ONNX variant of `cfg.onnx` for `precision`.

    Args:
        cfg: the model's validated config (onnx path, input preprocessing,
            calibration images and max_images).
        precision: "fp32", "fp16" or "int8".
        cache_dir: the daemon's cache folder; variants go to `<cache_dir>/onnx/`.
        progress: called with short progress text ("calibrating 12/64").
        fp16: FP16 transform settings (default: `Fp16Settings()`).
        int8: INT8 transform settings (default: `Int8Settings()`, TensorRT-shaped).

    Returns:
        PreparedModel: for fp32 the original file; otherwise the cached variant,
        with `calibration_hash` set for int8.

    Raises:
        PrecisionError (a BackendLoadError): unknown precision, no calibration
            images for int8, unreadable model, or a failed transform; the
            message says which.
    """
    source = Path(cfg.onnx)
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r} (expected one of {list(PRECISIONS)})")
    if precision == "fp32":
        return PreparedModel(onnx_path=source, precision="fp32", calibration_hash=None)
    if not source.is_file():
        raise PrecisionError(f"ONNX model not found: {source}")

    settings = (fp16 or Fp16Settings()) if precision == "fp16" else (int8 or Int8Settings())
    calibration_hash = None
    if precision == "int8":
        if not cfg.calibration.images:
            raise PrecisionError("int8 needs representative images: set [calibration] images "
                                 "(a folder of images or a video file)")
        progress("hashing calibration data")
        calibration_hash = calibration_data_hash(cfg)

    progress(f"hashing {source.name}")
    key = variant_key(file_sha256(source), precision, settings, calibration_hash)
    try:
        folder = variant_dir(Path(cache_dir))
    except OSError as exc:
        raise PrecisionError(f"no writable folder for the {precision} variant: {exc}") from exc
    target = variant_path(folder, source, precision, key)
    # Daemons and `edgeinfer build` sharing a cache make each variant once: the others wait here.
    with FileLock(target.with_name(target.name + ".lock"),
                  on_wait=lambda holder: progress(f"waiting for process {holder} making this variant")):
        return _reuse_or_make(cfg, source, precision, settings, calibration_hash, target, progress)


def _reuse_or_make(cfg, source: Path, precision: str, settings, calibration_hash, target: Path,
                   progress) -> PreparedModel:
    if target.is_file():
        touch_variant(target)
        log.info("model %s: reusing %s variant %s", cfg.name, precision, target)
        progress(f"reusing cached {precision} model")
        return PreparedModel(onnx_path=target, precision=precision, calibration_hash=calibration_hash)

    start = time.monotonic()
    if precision == "fp16":
        progress("converting to fp16")
        log.info("model %s: converting %s to fp16", cfg.name, source.name)

        def write(tmp: Path) -> None:
            convert_fp16(source, tmp, settings)
    else:
        input_name, dims = read_graph_io(source).image_input(cfg.input.tensor)
        samples = load_samples(Path(cfg.calibration.images), cfg.input, cfg.calibration.max_images,
                               what="calibration", progress=progress)
        log.info("model %s: quantizing %s to int8 (QDQ), calibrating on %d samples", cfg.name,
                 source.name, len(samples))

        def write(tmp: Path) -> None:
            quantize_int8(source, tmp, samples, input_name, fixed_batch(dims), settings, progress)
    try:
        atomic_write(target, write)
    except OSError as exc:
        raise PrecisionError(f"cannot write the {precision} variant {target}: {exc}") from exc
    log.info("model %s: %s variant ready in %.1f s: %s", cfg.name, precision,
             time.monotonic() - start, target)
    progress(f"{precision} model ready")
    return PreparedModel(onnx_path=target, precision=precision, calibration_hash=calibration_hash)
