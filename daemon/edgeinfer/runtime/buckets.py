"""Which batch sizes a runner sees: the model's effective max batch and its padding buckets.

A runtime concern, not a serving one: ONNX Runtime's CUDA EP re-plans every
convolution when a session's input shape changes, so the loader warms up (and,
with one session per batch size, creates) exactly these sizes, and the batchers
pad each batch up to one of them.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

from edgeinfer.config import BatchingConfig
from edgeinfer.runtime.base import Runner

log = logging.getLogger(__name__)


def effective_max_batch(cfg: BatchingConfig, runner: Runner, model_name: Optional[str] = None) -> int:
    """min(config max_batch, the runner's max batch when it has one); 1 when rows cannot be stacked.

    Stacking needs a dynamic leading (batch) dimension on every input and output:
    a model with a fixed batch (e.g. exported with batch 1) or outputs without a
    batch axis runs unbatched, with a warning naming the tensor (when `model_name` is given).
    """
    limit = cfg.max_batch
    if runner.info.max_batch:
        limit = min(limit, runner.info.max_batch)
    if limit <= 1:
        return 1
    for spec in list(runner.inputs) + list(runner.outputs):
        if not spec.dynamic_batch:
            if model_name is not None:
                    log.warning("model %s: batching off: tensor %r has shape %s, no dynamic batch dimension "
                            "to stack on", model_name, spec.name, list(spec.shape))
            return 1
    return limit


def batch_buckets(cfg: BatchingConfig, runner: Runner, max_batch: int) -> list[int]:
    """The batch sizes the runner will see, ascending; [] = any size (no padding).

    Buckets are the configured `buckets`, or else the preferred sizes, the powers of two and
    max_batch itself; all <= max_batch, and max_batch is always one (every batch needs a bucket).
    """
    mode = cfg.pad_to_buckets
    if runner.info.pads_batches:
        return []
    if mode == "auto":
        info = runner.info
        mode = "on" if info.backend == "onnxruntime" and info.device.startswith("cuda") else "off"
    if mode == "off" or max_batch <= 1:
        return []
    if cfg.buckets:
        return sorted({max_batch, *(s for s in cfg.buckets if 1 <= s <= max_batch)})
    sizes = {max_batch, *(s for s in cfg.preferred_batch_sizes if s <= max_batch)}
    p = 1
    while p < max_batch:
        sizes.add(p)
        p *= 2
    return sorted(sizes)


def bucket_for(rows: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= rows; rows itself when there are no buckets (or none is big enough)."""
    return next((b for b in buckets if b >= rows), rows)
