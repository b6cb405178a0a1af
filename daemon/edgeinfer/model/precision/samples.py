"""Representative images for calibration and the accuracy gate, and their hash.

A data set is a folder (image files, and video files whose frames are
sampled), a single video file or a single image. At most `max_images` samples
are taken, deterministically:

- still images come first (an operator put them there on purpose); when there
  are more than `max_images`, an evenly spaced subset of the sorted names;
- the remaining budget is split evenly between the videos, each sampled at
  evenly spaced frame indices over its whole length.

Every sample goes through the SAME `Preprocessor(cfg.input)` the model serves
with, so calibration ranges and gate figures describe served inputs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from edgeinfer.config import InputConfig, ModelConfig
from edgeinfer.errors import InvalidInput
from edgeinfer.model.families.preprocess import Preprocessor, Transform, cv2
from edgeinfer.model.precision.base import PrecisionError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm"})

# Bumped when the sampling rule changes, so old hashes (and cached variants) lapse.
SAMPLING_VERSION = 1


@dataclass
class Sample:
    """One preprocessed image: the model tensor (no batch dim) and its Transform."""

    name: str
    tensor: np.ndarray
    transform: Transform


def media_files(path: Path) -> tuple[list[Path], list[Path]]:
    """(still images, videos) of a data set path, sorted by name.

    Raises:
        PrecisionError: the path is missing or holds no image or video.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    elif path.is_file():
        files = [path]
    else:
        raise PrecisionError(f"calibration/validation data not found: {path}")
    stills = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    videos = [p for p in files if p.suffix.lower() in VIDEO_SUFFIXES]
    if not stills and not videos:
        raise PrecisionError(f"{path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                             f"or videos ({', '.join(sorted(VIDEO_SUFFIXES))}) found")
    return stills, videos


def _evenly(n_items: int, k: int) -> list[int]:
    """k indices spread evenly over range(n_items) (all of them when k >= n_items)."""
    if k >= n_items:
        return list(range(n_items))
    return [(i * n_items) // k for i in range(k)]


def _frame_count(video: Path) -> int:
    cap = cv2.VideoCapture(str(video))
    try:
        if not cap.isOpened():
            return 0
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if count > 0:
            return count
        # Some containers do not declare a count: walk the stream once.
        while cap.grab():
            count += 1
        return count
    finally:
        cap.release()


def _video_frames(video: Path, indices: list[int]) -> Iterator[tuple[int, np.ndarray]]:
    """Decode the wanted frames in one sequential pass.

    Sequential grab() is used rather than seeking: CAP_PROP_POS_FRAMES lands on
    the nearest keyframe with some codecs, which would make the sample set
    depend on the OpenCV build.
    """
    wanted = set(indices)
    last = max(indices)
    cap = cv2.VideoCapture(str(video))
    try:
        index = 0
        while index <= last and cap.grab():
            if index in wanted:
                ok, frame = cap.retrieve()
                if ok and frame is not None:
                    yield index, frame
            index += 1
    finally:
        cap.release()


def load_samples(path: Path, input_cfg: InputConfig, max_images: int, what: str = "calibration",
                 progress: Callable[[str], None] = lambda _m: None) -> list[Sample]:
    """Read, sample and preprocess a data set.

    Args:
        path: folder, video file or image file.
        input_cfg: the model's input config (the serving preprocessing).
        max_images: upper bound on the number of samples.
        what: word used in messages ("calibration", "validation").
        progress: called with short progress text.

    Returns:
        The samples, stills first, then video frames in file and frame order.

    Raises:
        PrecisionError: no readable image in the data set.
    """
    stills, videos = media_files(path)
    pre = Preprocessor(input_cfg)
    samples: list[Sample] = []
    chosen_stills = [stills[i] for i in _evenly(len(stills), max_images)]
    progress(f"reading {what} images from {path}")
    for file in chosen_stills:
        try:
            bgr = pre.decode(file.read_bytes())
        except (OSError, InvalidInput) as exc:
            log.warning("%s image %s skipped: %s", what, file, exc)
            continue
        tensor, transform = pre(bgr)
        samples.append(Sample(file.name, tensor, transform))
    budget = max_images - len(chosen_stills)
    for n, video in enumerate(videos):
        share = budget // len(videos) + (1 if n < budget % len(videos) else 0)
        if share <= 0:
            continue
        count = _frame_count(video)
        if count == 0:
            log.warning("%s video %s skipped: OpenCV cannot read any frame", what, video)
            continue
        for index, frame in _video_frames(video, _evenly(count, share)):
            tensor, transform = pre(frame)
            samples.append(Sample(f"{video.name}#{index}", tensor, transform))
    if not samples:
        raise PrecisionError(f"no readable {what} image in {path}")
    log.info("%s set: %d samples from %s (%d stills, %d videos)", what, len(samples), path,
             len(chosen_stills), len(videos))
    return samples


def dataset_hash(path: Path, input_cfg: InputConfig, max_images: int) -> str:
    """sha256 over the data set's file names and bytes, the sample bound and the preprocessing.

    Every image/video file of the set is hashed (not only the sampled ones):
    the sample choice is a function of the whole listing.
    """
    stills, videos = media_files(path)
    h = hashlib.sha256()
    settings = {"sampling": SAMPLING_VERSION, "max_images": max_images,
                "input": dataclasses.asdict(input_cfg)}
    h.update(json.dumps(settings, sort_keys=True).encode())
    for file in stills + videos:
        h.update(b"\0file\0" + file.name.encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def calibration_data_hash(cfg: ModelConfig) -> Optional[str]:
    """Hash of the model's calibration data (images and preprocessing), or None when none is set.

    The engine cache key of an INT8 engine includes it: new calibration
    images or a new preprocessing mean a new engine.

    Raises:
        PrecisionError: the configured data set is missing or holds no media file.
    """
    if not cfg.calibration.images:
        return None
    return dataset_hash(Path(cfg.calibration.images), cfg.input, cfg.calibration.max_images)


def validation_source(cfg: ModelConfig) -> Optional[Path]:
    """Where the accuracy gate reads images: `validation`, else the calibration images."""
    chosen = cfg.calibration.validation or cfg.calibration.images
    return Path(chosen) if chosen else None
