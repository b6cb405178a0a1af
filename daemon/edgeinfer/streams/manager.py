"""The streams of one daemon: capture threads feeding the serving path, results fanned out.

Each stream's inference runs as one task on the daemon's event loop: it takes the
newest frame from the capture's mailbox and sends it through the same
`InferencePipeline.run` as a gRPC request, so streams of one model share its
batches and its admission bound, and a stream with no frames costs nothing. Up to
`in_flight` frames per stream (default one) are in inference at a time: while they
run the capture keeps replacing the newest frame, which is the live-frame policy.
Results are published in frame order, whichever finishes first.

Results go to every subscriber's own bounded queue: when a subscriber reads
slower than results come, its oldest results are dropped and counted, and
publishing never waits for it.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from dataclasses import dataclass
from typing import Iterator, Optional

import cv2
import numpy as np

from edgeinfer.config import StreamConfig
from edgeinfer.errors import EdgeInferError, ModelNotReady, QueueFull, StreamNotFound, StreamUnavailable
from edgeinfer.model.families.postprocess import Options
from edgeinfer.model.registry import ModelRegistry
from edgeinfer.model.types import GpuFrame, Prediction, RawPixels
from edgeinfer.serving.lanes import InferencePipeline
from edgeinfer.streams.capture import Capture, Frame, Rate, State
from edgeinfer.streams.decode import open_source
from edgeinfer.streams.sources import redact

log = logging.getLogger(__name__)

DEFAULT_SUBSCRIBER_QUEUE = 64
_OPTIONS = Options()


@dataclass
class StreamResult:
    stream: str
    frame: Frame
    prediction: Prediction
    latency_s: float  # capture to result


class Subscriber:
    """One watcher's bounded queue (event loop thread only). `dropped`: results it never saw."""

    def __init__(self, maxlen: int = DEFAULT_SUBSCRIBER_QUEUE):
        self.maxlen = max(1, maxlen)
        self.queue: collections.deque = collections.deque()
        self.dropped = 0
        self.closed = False
        self._event = asyncio.Event()

    def offer(self, result: StreamResult) -> None:
        if len(self.queue) >= self.maxlen:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(result)
        self._event.set()

    def close(self) -> None:
        self.closed = True
        self._event.set()

    async def get(self) -> Optional[StreamResult]:
        """The next result, oldest first; None once closed and empty."""
        while not self.queue:
            if self.closed:
                return None
            self._event.clear()
            await self._event.wait()
        return self.queue.popleft()


@dataclass
class StreamStats:
    """One stream as ListStreams and the metrics see it."""
    name: str
    model: str
    source: str
    state: str
    state_reason: str
    decode: str
    fps_in: float
    fps_out: float
    frames_in: int
    frames_processed: int
    frames_dropped: int
    frames_skipped: int
    frames_failed: int
    reconnects: int
    last_error: str
    subscribers: int
    subscriber_drops: int
    state_changes: dict
    width: int
    height: int


def _model_device(registry: ModelRegistry, cfg: StreamConfig) -> int:
    """The GPU of the stream's model ([models.X] device, else [server] device): NVDEC decodes there."""
    model = registry.models.get(cfg.model)
    device = getattr(getattr(model, "cfg", None), "device", None)
    return int(device) if device is not None else 0


class Stream:
    """One configured stream: its capture, its inference task and its subscribers."""

    def __init__(self, cfg: StreamConfig, registry: ModelRegistry, pipeline: InferencePipeline, metrics=None,
                 capture: Optional[Capture] = None):
        self.cfg = cfg
        self.name = cfg.name
        self.registry = registry
        self.pipeline = pipeline
        self.metrics = metrics
        self.capture = capture or Capture(cfg, on_frame=self._frame_ready,
                                          opener=functools.partial(open_source, device=_model_device(registry, cfg)))
        self.capture.mailbox.on_put = self._frame_ready
        self.subscribers: set[Subscriber] = set()
        self.frames_processed = 0
        self.frames_failed = 0
        self.subscriber_drops = 0  # of subscribers that have left
        self.inference_note = ""
        self.rate_out = Rate()
        self.last_result: Optional[StreamResult] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._wake: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None
        self._last_taken: Optional[asyncio.Future] = None  # the newest frame's turn to publish
        self._idle_takers = 0  # read by the capture thread: whether a put must wake the loop

    # -- lifecycle (event loop thread) --------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = asyncio.ensure_future(self._infer_loop())
        self.capture.start()

    async def stop(self) -> None:
        for sub in list(self.subscribers):
            sub.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping either way
                pass
        await asyncio.get_running_loop().run_in_executor(None, self.capture.stop)

    def _frame_ready(self) -> None:
        # Reader thread: wake a taker on the loop, if one waits. While all are busy the frame waits
        # in the mailbox for the first to come back: a wake-up per decoded frame would cost the
        # interpreter a thread switch each (thousands a second with many streams on NVDEC).
        loop = self._loop
        if self._idle_takers and loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # loop closing
                pass

    # -- inference (event loop thread) ----------------------------------------------------
    async def _infer_loop(self) -> None:
        takers = [asyncio.ensure_future(self._take_frames()) for _ in range(self.cfg.in_flight)]
        try:
            await asyncio.gather(*takers)
        finally:
            for t in takers:
                t.cancel()

    async def _take_frames(self) -> None:
        """One of the stream's `in_flight` takers: the newest frame, through the model, and again."""
        loop = asyncio.get_running_loop()
        while True:
            frame = self.capture.mailbox.take()
            if frame is None:
                # Say we wait before looking once more: a frame put after that look wakes us.
                self._idle_takers += 1
                try:
                    self._wake.clear()
                    frame = self.capture.mailbox.take()
                    if frame is None:
                        await self._wake.wait()
                        continue
                finally:
                    self._idle_takers -= 1
            # Results leave in the order frames were taken: each waits for the one taken before it.
            before, mine = self._last_taken, loop.create_future()
            self._last_taken = mine
            try:
                await self._infer(frame, before)
            finally:
                if not mine.done():
                    mine.set_result(None)

    async def _infer(self, frame: Frame, before: Optional[asyncio.Future] = None) -> None:
        if isinstance(frame.pixels, np.ndarray):
            h, w = frame.pixels.shape[:2]
            # The frame's own buffer, no copy: the capture never writes into a frame it handed over.
            item = RawPixels(h, w, "bgr", memoryview(np.ascontiguousarray(frame.pixels)).cast("B"))
        else:  # NVDEC's frame, still in GPU memory: the model resizes it there, or copies it down
            item = GpuFrame(frame.pixels)
        try:
            model = self.registry.get(self.cfg.model)
            pred = await self.pipeline.run(model, item, _OPTIONS)
        except asyncio.CancelledError:
            raise
        except (ModelNotReady, QueueFull) as exc:
            # Not this stream's fault: note it and let a later frame try. A frame the model is
            # still loading for (a TensorRT build can take minutes) is not counted as failed.
            if isinstance(exc, QueueFull):
                self.frames_failed += 1
            self.inference_note = str(exc)
            await asyncio.sleep(0.1 if isinstance(exc, ModelNotReady) else 0.01)
            return
        except Exception as exc:  # noqa: BLE001 - one bad frame never stops the stream
            self.frames_failed += 1
            note = str(exc) if isinstance(exc, EdgeInferError) else f"{type(exc).__name__}: {exc}"
            if note != self.inference_note:  # once per new reason, not once per frame
                log.warning("stream %s: frame %d failed: %s", self.name, frame.index, note)
            self.inference_note = note
            await asyncio.sleep(0.05)
            return
        if before is not None and not before.done():
            await asyncio.shield(before)
        self.inference_note = ""
        latency = time.perf_counter() - frame.captured
        self.frames_processed += 1
        self.rate_out.tick()
        if self.metrics is not None:
            self.metrics.observe_stream_latency(self.name, latency)
        result = StreamResult(self.name, frame, pred, latency)
        self.last_result = result
        for sub in self.subscribers:
            sub.offer(result)

    # -- subscribers (event loop thread) -------------------------------------------------
    def subscribe(self, maxlen: int = DEFAULT_SUBSCRIBER_QUEUE) -> Subscriber:
        sub = Subscriber(maxlen)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        if sub in self.subscribers:
            self.subscribers.discard(sub)
            self.subscriber_drops += sub.dropped

    # -- views ------------------------------------------------------------------------
    def stats(self) -> StreamStats:
        c = self.capture
        latest = c.latest
        w, h = latest.size if latest is not None else (0, 0)
        reason = c.state_reason
        if c.state is State.LIVE and self.inference_note:
            reason = f"inference: {self.inference_note}"
        return StreamStats(
            name=self.name, model=self.cfg.model, source=redact(self.cfg.source), state=c.state.value,
            state_reason=reason, decode=c.decode, fps_in=c.rate_in.per_second(),
            fps_out=self.rate_out.per_second(), frames_in=c.frames_in, frames_processed=self.frames_processed,
            frames_dropped=c.frames_dropped, frames_skipped=c.frames_skipped, frames_failed=self.frames_failed,
            reconnects=c.reconnects, last_error=c.last_error, subscribers=len(self.subscribers),
            subscriber_drops=self.subscriber_drops + sum(s.dropped for s in self.subscribers),
            state_changes=dict(c.state_changes), width=w, height=h)

    def snapshot(self, boxes: bool) -> tuple[Frame, Optional[StreamResult]]:
        """The frame a snapshot shows: with boxes, the last processed one (its boxes fit it); else the newest."""
        result = self.last_result
        if boxes and result is not None:
            return result.frame, result
        frame = self.capture.latest
        if frame is None:
            if result is not None:
                return result.frame, None
            raise StreamUnavailable(f"stream {self.name!r} has no frame yet: {self.capture.state.value}"
                                    f"{' (' + self.capture.state_reason + ')' if self.capture.state_reason else ''}")
        return frame, None


def encode_snapshot(frame: Frame, result: Optional[StreamResult], quality: int = 90) -> bytes:
    """JPEG of the frame, with the result's boxes and labels drawn when given (worker thread)."""
    image = frame.image
    if result is not None and result.prediction.result.detections:
        image = image.copy()
        for d in result.prediction.result.detections:
            x1, y1, x2, y2 = (int(round(v)) for v in d.box)
            cv2.rectangle(image, (x1, y1), (x2, y2), (0, 255, 0), 2)
            text = f"{d.label or d.class_index} {d.score:.2f}"
            cv2.putText(image, text, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 255, 0), 1,
                        cv2.LINE_AA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - a BGR uint8 frame always encodes
        raise StreamUnavailable("the frame could not be encoded as JPEG")
    return buf.tobytes()


class StreamManager:
    """Every configured stream of one daemon. `start()` on the event loop after the server started."""

    def __init__(self, configs: list[StreamConfig], registry: ModelRegistry, pipeline: InferencePipeline,
                 metrics=None):
        self._streams: dict[str, Stream] = {c.name: Stream(c, registry, pipeline, metrics) for c in configs}
        self._started = False

    def __iter__(self) -> Iterator[Stream]:
        return iter(list(self._streams.values()))

    def __len__(self) -> int:
        return len(self._streams)

    def has(self, name: str) -> bool:
        return name in self._streams

    def get(self, name: str) -> Stream:
        stream = self._streams.get(name)
        if stream is None:
            known = ", ".join(sorted(self._streams)) or "none are configured"
            raise StreamNotFound(f"no stream named {name!r} (streams: {known})")
        return stream

    def stats(self) -> list[StreamStats]:
        return [s.stats() for s in self]

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        for s in self:
            log.info("stream %s: %s -> model %s at %s fps", s.name, redact(s.cfg.source), s.cfg.model,
                     s.cfg.fps or "source")
            s.start()

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        await asyncio.gather(*(s.stop() for s in self), return_exceptions=True)

    async def reconfigure(self, configs: list[StreamConfig], registry: ModelRegistry, pipeline: InferencePipeline,
                          metrics=None) -> dict[str, str]:
        """Apply a reloaded config's [[streams]] (event loop): a removed or changed stream stops (its
        watchers end), a new or changed one starts; an unchanged one runs on untouched, its watchers
        with it. Returns stream name -> "added", "removed", "updated" or "unchanged"."""
        new = {c.name: c for c in configs}
        outcome: dict[str, str] = {}
        stopping = []
        for name, stream in list(self._streams.items()):
            if name not in new:
                outcome[name] = "removed"
            elif new[name] != stream.cfg:
                outcome[name] = "updated"
            else:
                outcome[name] = "unchanged"
                continue
            del self._streams[name]
            stopping.append(stream.stop())
        await asyncio.gather(*stopping, return_exceptions=True)
        for name, cfg in new.items():
            if name in self._streams:
                continue
            outcome.setdefault(name, "added")
            stream = Stream(cfg, registry, pipeline, metrics)
            self._streams[name] = stream
            if self._started:
                log.info("stream %s: %s -> model %s at %s fps", name, redact(cfg.source), cfg.model, cfg.fps or "source")
                stream.start()
        return outcome
