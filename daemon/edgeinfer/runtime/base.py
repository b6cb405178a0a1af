"""The runner interface every backend implements.

A runner owns one loaded model on one runtime. Loading is lazy: constructing a
runner touches no GPU; `activate()` does. `infer()` validates the feeds
against the model's tensor specs, then calls the backend's `infer_impl()`.
Runners are safe to call from several threads at once up to `max_concurrency`
(the batcher never exceeds it).
"""
from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np

from edgeinfer.errors import InvalidInput


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one model input or output. -1 = dynamic."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def dynamic_batch(self) -> bool:
        return bool(self.shape) and self.shape[0] == -1

    def check(self, array: np.ndarray) -> None:
        """Raise InvalidInput unless `array` fits this spec."""
        if array.dtype != self.dtype:
            raise InvalidInput(f"input {self.name!r}: expected dtype {self.dtype.name}, got {array.dtype.name}")
        if len(array.shape) != len(self.shape):
            raise InvalidInput(f"input {self.name!r}: expected shape {_fmt(self.shape)} "
                               f"(rank {len(self.shape)}), got {list(array.shape)}")
        if not self.fits(array.shape):
            raise InvalidInput(f"input {self.name!r}: expected shape {_fmt(self.shape)}, got {list(array.shape)}")

    def fits(self, shape: Sequence[int]) -> bool:
        """Same rank, and every fixed dimension equal (-1 takes any)."""
        return len(shape) == len(self.shape) and all(want == -1 or want == got
                                                     for want, got in zip(self.shape, shape))


def batch_one_shape(spec: TensorSpec) -> Optional[tuple[int, ...]]:
    """The spec's shape at batch 1 (a dynamic batch axis taken as 1), or None while another axis is dynamic."""
    shape = tuple(1 if (i == 0 and d == -1) else d for i, d in enumerate(spec.shape))
    return shape if all(d >= 0 for d in shape) else None


def _fmt(shape: Sequence[int]) -> str:
    return "[" + ", ".join("?" if d == -1 else str(d) for d in shape) + "]"


def check_feeds(inputs: Sequence[TensorSpec], feeds: Mapping[str, np.ndarray]) -> Optional[int]:
    """Check feeds against the model's inputs; returns the batch size (None when no input has one).

    Raises:
        InvalidInput: a tensor is missing or unknown, or has the wrong dtype or shape.
    """
    if len(feeds) == len(inputs) and all(s.name in feeds for s in inputs):
        # The common case (exactly the model's inputs), without building sets per request.
        batch = None
        for spec in inputs:
            arr = feeds[spec.name]
            spec.check(arr)
            if batch is None and spec.dynamic_batch:
                batch = arr.shape[0]
        return batch
    specs = {s.name: s for s in inputs}
    missing = sorted(set(specs) - set(feeds))
    if missing:
        raise InvalidInput(f"missing input tensor(s) {missing}; the model takes {sorted(specs)}")
    extra = sorted(set(feeds) - set(specs))
    if extra:
        raise InvalidInput(f"unknown input tensor(s) {extra}; the model takes {sorted(specs)}")
    batch = None
    for name, arr in feeds.items():
        specs[name].check(arr)
        if specs[name].dynamic_batch:
            batch = arr.shape[0] if batch is None else batch
    return batch


@dataclass
class RunnerInfo:
    """What a loaded runner tells the rest of the daemon (and GetModel)."""

    backend: str
    precision: str
    device: str = "cpu"
    # Largest batch the runner accepts (profile max for TensorRT); None = any.
    max_batch: Optional[int] = None
    # Concurrent infer() calls the runner supports (contexts, sessions).
    max_concurrency: int = 1
    # The runner pads batches to its own bucket sizes (a shared inference host's runner
    # seen from a front-end): callers hand it their rows unpadded.
    pads_batches: bool = False
    details: dict = field(default_factory=dict)


class BoundCall(abc.ABC):
    """A batch-1 call whose input and output buffers were made once.

    Write each input's bytes into `inputs[name]` in place, then `run()`. For one
    caller thread at a time (the event loop's inline path, rpc/fastpath.py);
    the arrays `run()` returns are the call's own buffers, overwritten by the
    next call, so copy what must outlive it.
    """

    inputs: dict[str, np.ndarray]

    @abc.abstractmethod
    def run(self) -> dict[str, np.ndarray]:
        """Run the model on `inputs`; outputs by name.

        Raises:
            InferenceError: the runtime failed.
        """


class Runner(abc.ABC):
    """Base class of all backend runners."""

    def __init__(self) -> None:
        self.active = False
        self.last_inference_s = 0.0

    # -- lifecycle --------------------------------------------------------
    def activate(self) -> None:
        if not self.active:
            self.activate_impl()
            self.active = True

    def deactivate(self) -> None:
        if self.active:
            self.deactivate_impl()
            self.active = False

    def __enter__(self) -> "Runner":
        self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # -- description ------------------------------------------------------
    @property
    @abc.abstractmethod
    def inputs(self) -> list[TensorSpec]: ...

    @property
    @abc.abstractmethod
    def outputs(self) -> list[TensorSpec]: ...

    @property
    @abc.abstractmethod
    def info(self) -> RunnerInfo: ...

    # -- inference --------------------------------------------------------
    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model. Feeds are checked against `inputs` first.

        Raises:
            InvalidInput: a feed is missing, unexpected, or has the wrong dtype/shape.
            InferenceError: the runtime failed.
        """
        batch = check_feeds(self.inputs, feeds)
        limit = self.info.max_batch
        if batch is not None and limit is not None and batch > limit:
            raise InvalidInput(f"batch of {batch} exceeds the engine's maximum batch {limit}")
        start = time.perf_counter()
        out = self.infer_impl(feeds)
        self.last_inference_s = time.perf_counter() - start
        return out

    @abc.abstractmethod
    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def bound_call(self) -> Optional[BoundCall]:
        """A new BoundCall on this runner, or None where the backend has none (the caller then uses
        infer_impl) or the model's shapes at batch 1 are not all fixed."""
        return None

    def rows_in_last_call(self) -> Optional[int]:
        """Real rows of the runtime call this thread's last infer() ran in, when the runner merged it
        with other callers' rows (a shared inference host); None: the call ran on its own."""
        return None

    def activate_impl(self) -> None:  # pragma: no cover - default no-op
        pass

    def deactivate_impl(self) -> None:  # pragma: no cover - default no-op
        pass


class DescribedRunner(Runner):
    """A runner whose inputs, outputs and info are fixed once loaded: the subclass sets
    `_inputs`, `_outputs` and `_info` in its constructor."""

    _inputs: list[TensorSpec]
    _outputs: list[TensorSpec]
    _info: RunnerInfo

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs

    @property
    def info(self) -> RunnerInfo:
        return self._info
