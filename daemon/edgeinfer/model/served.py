"""A served model: state, runner, preprocessing and postprocessing, glued.

Everything here is synchronous and runs on worker threads; the gRPC layer
only awaits it. The runtime (runner) and the model family (pre/post) stay
separate: nothing below branches on the backend.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from edgeinfer.runtime.base import Runner, TensorSpec
from edgeinfer.config import ModelConfig, ServerConfig
from edgeinfer.errors import BackendLoadError, InvalidInput, ModelNotReady
from edgeinfer.cache.files import file_sha256
from edgeinfer.model.loading import Attempt, ModelLoader
from edgeinfer.model.families.labels import load_labels
from edgeinfer.model.families.postprocess import Options, Result, postprocessor_for
from edgeinfer.model.families.preprocess import IDENTITY, Preprocessor
from edgeinfer.model.types import EncodedImage, GpuFrame, ModelInput, ModelState, Prediction, Prepared, Tensors, Timing

log = logging.getLogger(__name__)


def _us(seconds: float) -> int:
    return int(seconds * 1e6)


_STOPPED = "loading stopped: the daemon is shutting down"


class ServedModel:
    """One configured model through its whole life: loading, ready/failed, serving."""

    def __init__(self, cfg: ModelConfig, server_cfg: ServerConfig, cache_dir: Optional[Path] = None,
                 on_state_change: Callable[["ServedModel"], None] = lambda _m: None, remote=None,
                 arena_shrink_bytes: Optional[int] = None):
        """remote: serving.shared.remote.RemoteModels: the model is loaded and run by the shared
        inference process; this one serves it through a RemoteRunner.
        arena_shrink_bytes: [limits] arena_shrink_bytes for an ONNX Runtime runner (None: its default)."""
        self.cfg = cfg
        self.arena_shrink_bytes = arena_shrink_bytes
        self.remote = remote
        self.cache_dir = cache_dir
        self.cuda_sync = server_cfg.cuda_sync
        self.on_state_change = on_state_change
        self.state = ModelState.LOADING
        self.state_reason = "waiting to load"
        self.runner: Optional[Runner] = None
        self.attempts: list[Attempt] = []
        self.accuracy: list = []
        self.labels = load_labels(cfg.postprocess.labels)
        self.preprocessor = Preprocessor(cfg.input, server_cfg.max_image_pixels, server_cfg.max_image_bytes)
        self.postprocessor = postprocessor_for(cfg.postprocess, self.labels)
        self.image_input: Optional[TensorSpec] = None
        self.load_seconds = 0.0
        # Fastest batch-1 inference seen at warm-up (us); None until measured.
        self.warm_infer_us: Optional[float] = None
        # [models.input] normalize_on = "gpu" in effect: prepare() hands the runner uint8 NHWC images.
        self.normalize_on_gpu = False
        # [models.input] decode = "gpu"/"auto" in effect: prepare() hands the runner ResizeJobs (encoded images).
        self.decode_on_gpu = False
        self._lock = threading.Lock()
        # Set by unload(): a load still running (e.g. warming up at shutdown) ends quietly,
        # and a TensorRT build in progress stops at its next step.
        self._stop_loading = threading.Event()
        # Taken down on request (take_down), not failed: RepositoryIndex says UNAVAILABLE, "unloaded".
        self.unloaded = False
        # Set when a reload put another ServedModel of this name in the registry: this one only
        # answers the requests it already has (rpc/fastpath.py forgets it at once).
        self.retired = False
        # sha256 of the ONNX file as it was when loading began: a reload compares it.
        self.onnx_digest: Optional[str] = None

    @property
    def name(self) -> str:
        return self.cfg.name

    # -- lifecycle ----------------------------------------------------------
    def _set_state(self, state: ModelState, reason: str) -> None:
        with self._lock:
            self.state, self.state_reason = state, reason
        level = logging.ERROR if state is ModelState.FAILED and reason != _STOPPED else logging.INFO
        log.log(level, "model %s: %s: %s", self.name, state.value, reason)
        self.on_state_change(self)

    def progress(self, message: str) -> None:
        """Loaders report here; the text shows in GetModel while loading.

        Every long step of a load (hashing, converting, calibrating, validating, building) reports
        here between its pieces, so this is where a load that shutdown or a reload stopped ends:
        at the next piece, in Python, never inside a runtime's native code.

        Raises:
            BackendLoadError: loading was stopped (unload()).
        """
        if self._stop_loading.is_set():
            raise BackendLoadError(_STOPPED)
        log.info("model %s: %s", self.name, message)
        with self._lock:
            if self.state is ModelState.LOADING:
                self.state_reason = message

    def load(self) -> None:
        """Blocking: run the fallback chain, check the input, warm up, mark ready or failed."""
        start = time.perf_counter()
        self._set_state(ModelState.LOADING, "loading")
        try:
            if self.onnx_digest is None:
                self.onnx_digest = file_sha256(self.cfg.onnx)
            runner = self._remote_runner() if self.remote is not None else self._local_runner()
            self.progress(f"warming up ({self.cfg.warmup_runs} runs)")
            self._warm_up(runner)
        except Exception as exc:  # noqa: BLE001 - any failure is a failed model, never a dead daemon
            self.load_seconds = time.perf_counter() - start
            if self._stop_loading.is_set():  # unload() took the runner away mid-load: not the model's fault
                self._set_state(ModelState.FAILED, _STOPPED)
                return
            if not isinstance(exc, BackendLoadError):
                log.exception("model %s failed to load", self.name)
            self._set_state(ModelState.FAILED, str(exc))
            return
        if self._stop_loading.is_set():  # loaded after shutdown began: never serve it
            runner.deactivate()
            self._set_state(ModelState.FAILED, _STOPPED)
            return
        self.runner = runner
        self.load_seconds = time.perf_counter() - start
        info = runner.info
        # GetModel and `edgeinfer models` show the reason: say where normalization runs when it was asked for.
        norm = f"; normalize on {info.details['normalize_on']}" if "normalize_on" in info.details else ""
        if "decode_on" in info.details:
            norm = f"; decode on {info.details['decode_on']}" + norm
        if "inference_process" in info.details:
            norm += f"; inference process {info.details['inference_process']}"
        self._set_state(ModelState.READY, f"ready on {info.backend}/{info.precision} ({info.device}) "
                                          f"in {self.load_seconds:.1f}s{norm}")

    def _local_runner(self) -> Runner:
        """Load through the fallback chain in this process; check the image input; wrap for GPU normalization."""
        self._set_host_wait()
        outcome = ModelLoader(self.cfg, self.cache_dir, self.progress, cancel=self._stop_loading)()
        self.attempts, self.accuracy = outcome.attempts, outcome.accuracy
        if outcome.runner is None:
            raise BackendLoadError(f"no backend could load the model: {outcome.failure_reason}")
        runner = outcome.runner
        if self.arena_shrink_bytes is not None and hasattr(runner, "shrink_arena_bytes"):
            runner.shrink_arena_bytes = self.arena_shrink_bytes
        self.image_input = self._check_image_input(runner)
        decoding = self._decoding(runner)
        return decoding if decoding is not None else self._normalizing(runner)

    def _set_host_wait(self) -> None:
        """[server] cuda_sync, before a runtime creates this process's CUDA context (see gpu.memory)."""
        if self.cuda_sync == "auto":
            return
        from edgeinfer.runtime.gpu.memory import set_host_wait

        try:
            set_host_wait(self.cuda_sync)
        except Exception as exc:  # noqa: BLE001 - a wait mode the driver refuses must not fail the model
            log.warning("[server] cuda_sync = %r not applied: %s", self.cuda_sync, exc)

    def _remote_runner(self) -> Runner:
        """The shared inference process loads the model (waits while it does); a runner that calls it."""
        self.progress("loading in the shared inference process")
        d = self.remote.describe(self.name)
        self.attempts, self.accuracy = d.attempts, d.accuracy
        if d.state != ModelState.READY.value or d.info is None:
            raise BackendLoadError(f"in the shared inference process: {d.reason}")
        self.image_input, self.normalize_on_gpu, self.decode_on_gpu = d.image_input, d.normalize_on_gpu, d.decode_on_gpu
        return self.remote.runner(self.name, d, self.cfg.batching.shared_calls_in_flight)

    def unload(self) -> None:
        self._stop_loading.set()
        runner, self.runner = self.runner, None
        if runner is not None:
            runner.deactivate()

    def take_down(self, reason: str) -> None:
        """Stop serving on request (KServe's RepositoryModelUnload): the runner goes, the model
        answers UNAVAILABLE with `reason` until `bring_up`. FAILED is the state of a model
        that does not serve, whatever the cause; the reason says which."""
        self.unload()
        self.unloaded = True
        self._set_state(ModelState.FAILED, reason)

    def bring_up(self) -> None:
        """Load again after `take_down` (or a failed load); blocking, as load()."""
        self._stop_loading.clear()
        self.unloaded = False
        self.load()

    def _normalizing(self, runner: Runner) -> Runner:
        """[models.input] normalize_on = "gpu": the runner wrapped so its image input takes uint8 NHWC.

        Where the GPU path cannot run, the CPU normalizes (as with "cpu") and the
        runner's details and the log say why.
        """
        self.normalize_on_gpu = False
        if self.cfg.input.normalize_on != "gpu" or self.image_input is None:
            return runner
        from edgeinfer.runtime.gpu.normalizing_runner import why_not_on_gpu

        reason = why_not_on_gpu(runner, self.cfg.input)
        if reason is None:
            try:
                from edgeinfer.runtime.gpu.normalizing_runner import GpuNormalizingRunner
                from edgeinfer.runtime.gpu.preprocess_kernel import Normalization

                wrapped = GpuNormalizingRunner(runner, self.image_input.name,
                                               Normalization.from_input_config(self.cfg.input),
                                               swap_rb=self.cfg.input.color == "rgb")
                self.normalize_on_gpu = True
                return wrapped
            except Exception as exc:  # noqa: BLE001 - NVRTC/CUDA failures: serve with CPU normalization
                reason = f"{type(exc).__name__}: {exc}"
        runner.info.details["normalize_on"] = f"cpu (gpu asked for: {reason})"
        log.warning("model %s: normalize_on = \"gpu\" not possible, normalizing on the CPU: %s", self.name, reason)
        return runner

    def _decoding(self, runner: Runner) -> Optional[Runner]:
        """[models.input] decode = "gpu" or "auto": the runner wrapped to decode, resize and normalize on the GPU.

        None where the CPU decodes: as configured, or because the GPU path cannot run here, in
        which case the runner's details (GetModel's state) and, for "gpu", a warning say why.
        """
        self.decode_on_gpu = False
        wanted = self.cfg.input.decode
        if wanted == "cpu" or self.image_input is None:
            return None
        from edgeinfer.runtime.gpu.decoding_runner import why_not_decode_on_gpu

        reason = why_not_decode_on_gpu(runner, self.cfg.input)
        if reason is None:
            try:
                from edgeinfer.runtime.gpu.decoding_runner import GpuDecodingRunner
                from edgeinfer.runtime.gpu.preprocess_kernel import Normalization

                wrapped = GpuDecodingRunner(runner, self.image_input.name,
                                            Normalization.from_input_config(self.cfg.input), self.cfg.input.pad_value,
                                            tuple(self.cfg.input.size))
                self.decode_on_gpu = True
                return wrapped
            except Exception as exc:  # noqa: BLE001 - nvImageCodec/NVRTC/CUDA failures: serve with the CPU path
                reason = f"{type(exc).__name__}: {exc}"
        runner.info.details["decode_on"] = f"cpu ({wanted} asked for: {reason})"
        log.log(logging.WARNING if wanted == "gpu" else logging.INFO,
                "model %s: decode = %r: decoding on the CPU: %s", self.name, wanted, reason)
        return None

    def _check_image_input(self, runner: Runner) -> Optional[TensorSpec]:
        """The image input must match the configured size/layout/dtype, or the model fails to load."""
        specs = {s.name: s for s in runner.inputs}
        name = self.cfg.input.tensor or runner.inputs[0].name
        if name not in specs:
            raise BackendLoadError(f"[models.{self.name}.input] tensor: the model has no input {name!r} "
                                   f"(inputs: {sorted(specs)})")
        spec = specs[name]
        tensor_only = self.cfg.postprocess.task == "raw" and not self.cfg.input.tensor
        if tensor_only and (len(runner.inputs) != 1 or len(spec.shape) != 4):
            return None  # a raw model that takes tensors only (e.g. a text encoder)
        expected = self._image_shape()
        if len(spec.shape) != 4:
            raise BackendLoadError(f"input {name!r} has rank {len(spec.shape)}; an image input needs rank 4")
        for want, got in zip(spec.shape[1:], expected[1:]):
            if want != -1 and want != got:
                raise BackendLoadError(
                    f"input {name!r} is {list(spec.shape)} but [models.{self.name}.input] gives "
                    f"{self.cfg.input.layout} {list(expected)} (size {self.cfg.input.size}, color {self.cfg.input.color})")
        if spec.dtype != np.dtype(self.cfg.input.dtype):
            raise BackendLoadError(f"input {name!r} takes {spec.dtype.name}, but [models.{self.name}.input] "
                                   f"dtype is {self.cfg.input.dtype}")
        return spec

    def _image_shape(self) -> tuple[int, int, int, int]:
        w, h = self.cfg.input.size
        c = 1 if self.cfg.input.color == "gray" else 3
        return (1, c, h, w) if self.cfg.input.layout == "NCHW" else (1, h, w, c)

    def example_shapes(self, batch: int = 1) -> dict[str, tuple[int, ...]]:
        """The input shapes example_feeds makes: those the model ran at warm-up (batch aside)."""
        shapes = {}
        for spec in self.runner.inputs if self.runner else []:
            if self.image_input is not None and spec.name == self.image_input.name:
                shapes[spec.name] = (batch,) + tuple(spec.shape[1:] if self.normalize_on_gpu else self._image_shape()[1:])
            else:
                shapes[spec.name] = tuple(batch if i == 0 and d == -1 else (d if d > 0 else 1)
                                          for i, d in enumerate(spec.shape))
        return shapes

    def example_feeds(self, batch: int = 1) -> dict[str, np.ndarray]:
        """Feeds of the right shape and dtype (for warm-up and benchmarks)."""
        rng = np.random.default_rng(0)
        feeds = {}
        specs = {spec.name: spec for spec in (self.runner.inputs if self.runner else [])}
        for name, shape in self.example_shapes(batch).items():
            spec = specs[name]
            if self.decode_on_gpu and self.image_input is not None and name == self.image_input.name:
                feeds[name] = self._example_jobs(batch)
                continue
            if np.issubdtype(spec.dtype, np.floating):
                feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
            else:
                feeds[spec.name] = np.ones(shape, spec.dtype)
        return feeds

    def _example_jobs(self, batch: int) -> np.ndarray:
        """Warm-up images for the GPU decode path: one noise JPEG at the model's size, `batch` times."""
        from edgeinfer.model.families.preprocess import cv2
        from edgeinfer.runtime.gpu.image_job import job_batch

        w, h = self.cfg.input.size
        noise = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
        data = cv2.imencode(".jpg", noise)[1].tobytes()
        job = self._job(data)[0]
        return job_batch([job] * batch)

    def _job(self, data: bytes):
        """(ResizeJob, Transform) for an encoded image on the GPU path: JPEG/PNG decoded there, others here."""
        from edgeinfer.model.families.preprocess import image_format
        from edgeinfer.runtime.gpu.image_job import ResizeJob

        model_rgb = self.cfg.input.color == "rgb"
        if image_format(data) in ("jpeg", "png"):
            e = self.preprocessor.plan_encoded(data)
            p = e.plan
            job = ResizeJob(e.reduce, p.width, p.height, p.resized_w, p.resized_h, p.dx, p.dy,
                            swap_rb=not model_rgb, data=data)
            return job, e.transform
        bgr, reduced = self.preprocessor.decode_for_model(data)
        return self._pixel_job(bgr, reduced)

    def _pixel_job(self, bgr: np.ndarray, reduced=None):
        """(ResizeJob, Transform) for pixels decoded on the CPU (BGR): the GPU still resizes and normalizes."""
        h, w = bgr.shape[:2]
        return self._decoded_job(w, h, reduced, pixels=np.ascontiguousarray(bgr))

    def _decoded_job(self, w: int, h: int, reduced=None, **source):
        """(ResizeJob, Transform) for an image already decoded to w x h BGR (`pixels`), or a video frame
        left in GPU memory (`frame`, NV12 that the kernel converts to BGR): resized where it lies."""
        from edgeinfer.runtime.gpu.image_job import ResizeJob

        p = self.preprocessor.resize_plan(w, h)
        job = ResizeJob(1, w, h, p.resized_w, p.resized_h, p.dx, p.dy, swap_rb=self.cfg.input.color == "rgb", **source)
        sent = (reduced.width, reduced.height) if reduced is not None else None
        return job, p.transform(reduced.factor if reduced is not None else 1, sent)

    # Batch-1 runs timed for warm_infer_us beyond the configured warm-up, for a model fast enough
    # that they cost nothing (below 10 ms a run). The warm-up time decides whether tensor requests
    # run inline (serving/lanes.py). On a device host's 2 cores, where the benchmark's other
    # processes started beside the daemon, the trivial model (~25 us a run once serving) served
    # through the workers at ~0.6 of the echo: both its warm-up runs had taken over 250 us.
    TIMING_RUNS = 10
    TIMING_RUNS_BELOW_US = 10_000

    def _warm_up(self, runner: Runner) -> None:
        # Warm every batch size the batcher will run (the first call of a new
        # size can cost far more than the rest: algorithm search, allocations),
        # so the model is ready only once each one is.
        from edgeinfer.runtime.buckets import batch_buckets, effective_max_batch

        self.runner = runner  # example_feeds reads it
        try:
            sizes = [1] + batch_buckets(self.cfg.batching, runner, effective_max_batch(self.cfg.batching, runner))
            for size in sorted(set(sizes)):
                if size > 1:
                    self.progress(f"warming up batch size {size}")
                feeds = self.example_feeds(size)
                for _ in range(self.cfg.warmup_runs):
                    if size == 1:
                        self._timed_run(runner, feeds)
                    else:
                        runner.infer(feeds)
            if self.warm_infer_us is not None and self.warm_infer_us < self.TIMING_RUNS_BELOW_US:
                feeds = self.example_feeds(1)
                for _ in range(self.TIMING_RUNS):
                    self._timed_run(runner, feeds)
        finally:
            self.runner = None

    def _timed_run(self, runner: Runner, feeds: dict) -> None:
        """One batch-1 run; keep the fastest (us) in warm_infer_us: the others were slowed by something else."""
        t0 = time.perf_counter()
        runner.infer(feeds)
        us = (time.perf_counter() - t0) * 1e6
        self.warm_infer_us = us if self.warm_infer_us is None else min(self.warm_infer_us, us)

    def require_ready(self) -> Runner:
        runner = self.runner
        if self.state is not ModelState.READY or runner is None:
            raise ModelNotReady(f"model {self.name!r} is {self.state.value}: {self.state_reason}")
        return runner

    # -- serving ------------------------------------------------------------
    def prepare(self, item: ModelInput) -> Prepared:
        """Decode and preprocess one request (worker thread)."""
        start = time.perf_counter()
        if isinstance(item, Tensors):
            return Prepared(item.arrays, IDENTITY, (0, 0), _us(time.perf_counter() - start), item.rows)
        if self.image_input is None:
            raise InvalidInput(f"model {self.name!r} takes tensors, not images: send named tensors")
        if self.decode_on_gpu:
            from edgeinfer.runtime.gpu.image_job import job_batch

            if isinstance(item, EncodedImage):
                job, transform = self._job(item.data)
            elif isinstance(item, GpuFrame):
                job, transform = self._decoded_job(item.width, item.height, frame=item.frame)
            else:
                job, transform = self._pixel_job(
                    self.preprocessor.from_raw(item.height, item.width, item.pixel_format, item.data))
            return Prepared({self.image_input.name: job_batch([job])}, transform, (transform.width, transform.height),
                            _us(time.perf_counter() - start))
        reduced = None
        if isinstance(item, EncodedImage):
            bgr, reduced = self.preprocessor.decode_for_model(item.data)
        elif isinstance(item, GpuFrame):
            bgr = item.frame.to_bgr()
        else:
            bgr = self.preprocessor.from_raw(item.height, item.width, item.pixel_format, item.data)
        if self.normalize_on_gpu:
            img, transform = self.preprocessor.geometry(bgr, keep_bgr=True, reduced=reduced)
            feeds = {self.image_input.name: np.ascontiguousarray(img)[None]}
        else:
            tensor, transform = self.preprocessor(bgr, reduced=reduced)
            feeds = {self.image_input.name: tensor[None]}
        return Prepared(feeds, transform, (transform.width, transform.height), _us(time.perf_counter() - start))

    def postprocess(self, outputs: dict[str, np.ndarray], prepared: Prepared,
                    options: Options) -> Result:
        return self.postprocessor(outputs, prepared.transform, options)

    def finish(self, outputs: dict[str, np.ndarray], prepared: Prepared, options: Options) -> Result:
        """Postprocess one request's outputs (its rows only, when it ran in a batch)."""
        if prepared.batch != 1 and self.cfg.postprocess.task != "raw":
            # A batch sent as tensors: postprocess item 0 only would be wrong, return tensors.
            return Result(outputs=outputs)
        return self.postprocess(outputs, prepared, options)

    def finish_batch(self, outputs: dict[str, np.ndarray],
                     items: list[tuple[Prepared, Options]]) -> list[Union[Result, Exception]]:
        """Postprocess a batch: `outputs` hold every item's rows, in order. One answer per item.

        Single-row image items go through the postprocessor's all-rows path
        at once; a failure there (or any multi-row item) falls back to one
        item at a time, so a failing item only fails itself.
        """
        if len(items) > 1 and all(p.batch == 1 for p, _ in items):
            try:
                return list(self.postprocessor.rows(outputs, [p.transform for p, _ in items],
                                                    [o for _, o in items]))
            except Exception:  # noqa: BLE001 - find the item that fails, below
                pass
        answers: list[Union[Result, Exception]] = []
        offset = 0
        for prepared, options in items:
            part = {name: arr[offset:offset + prepared.batch] for name, arr in outputs.items()}
            offset += prepared.batch
            try:
                answers.append(self.finish(part, prepared, options))
            except Exception as exc:  # noqa: BLE001 - this item's own error
                answers.append(exc)
        return answers

    def predict(self, item: ModelInput, options: Options) -> Prediction:
        """The whole pipeline for one request, unbatched (worker thread)."""
        start = time.perf_counter()
        runner = self.require_ready()
        prepared = self.prepare(item)
        t0 = time.perf_counter()
        outputs = runner.infer(prepared.feeds)
        t1 = time.perf_counter()
        result = self.finish(outputs, prepared, options)
        t2 = time.perf_counter()
        timing = Timing(preprocess_us=prepared.preprocess_us, inference_us=_us(t1 - t0),
                        postprocess_us=_us(t2 - t1), total_us=_us(t2 - start),
                        batch_size=runner.rows_in_last_call() or 1)
        info = runner.info
        return Prediction(result, timing, prepared.image_size, info.backend, info.precision)
