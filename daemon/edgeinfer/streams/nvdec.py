"""Optional GPU decode: NVDEC through PyNvVideoCodec (`decode = "gpu"` or `"auto"`).

Kept apart from the CPU path: it is imported only when a stream asks for it, and
every reason it cannot run (library absent, no NVIDIA GPU, a source NVDEC cannot
demux) is a `DecoderUnavailable` whose message the stream's state shows while the
CPU decodes instead.

Frames stay in GPU memory: NVDEC decodes into device memory as NV12 in the CUDA
primary context (the one the model's buffers and kernels use), each frame is copied
into a buffer of this source's pool (the decoder reuses its own), and the stream
hands it on as an `Nv12Surface`. A model whose input is decoded on the GPU
(`[models.input] decode = "gpu"`) converts and resizes it where it lies (the NV12
kernel of runtime/gpu/preprocess_kernel.py); anything else that needs pixels (a
model on the CPU path, a snapshot) copies it down and converts it with OpenCV.
A pool buffer goes back to the pool when no frame refers to it any more.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import threading
import weakref
from pathlib import Path
from typing import Union

import numpy as np

from edgeinfer.config import SOURCE_DEVICE, SOURCE_FILE, SOURCE_GSTREAMER, StreamConfig, source_kind
from edgeinfer.runtime.gpu.image_job import Nv12Surface
from edgeinfer.streams.sources import Source, SourceError, redact

log = logging.getLogger(__name__)


class DecoderUnavailable(Exception):
    """NVDEC cannot decode this stream here; the message says why."""


def _nvc():
    try:
        import PyNvVideoCodec as nvc  # noqa: N813 - the library's own name
    except ImportError as exc:
        raise DecoderUnavailable(f"PyNvVideoCodec is not installed ({exc}); pip install PyNvVideoCodec") from None
    return nvc


def _gpu_present() -> None:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        raise DecoderUnavailable("no NVIDIA driver (libcuda.so.1) on this machine") from None


class _FramePool:
    """Device buffers of one frame size, reused: a buffer returns when its frame is dropped."""

    def __init__(self, device: int, nbytes: int):
        self.device = device
        self.nbytes = nbytes
        self._free: list = []
        self._lock = threading.Lock()
        self._closed = False

    def take(self):
        from edgeinfer.runtime.gpu.memory import DeviceBuffer

        with self._lock:
            if self._free:
                return self._free.pop()
        return DeviceBuffer(self.nbytes, self.device)

    def give(self, buffer) -> None:
        with self._lock:
            if not self._closed:
                self._free.append(buffer)
                return
        buffer.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            free, self._free = self._free, []
        for buffer in free:
            buffer.close()


def _planes(frame, width: int, height: int) -> tuple[int, int, int, int]:
    """(luma address, luma pitch, chroma address, chroma pitch) of a decoded NV12 frame in device memory."""
    cuda = getattr(frame, "cuda", None)
    if callable(cuda):
        planes = [p.__cuda_array_interface__ for p in cuda()]
        if len(planes) >= 2:
            pitch = [int(p["strides"][0]) if p.get("strides") else width for p in planes[:2]]
            return int(planes[0]["data"][0]), pitch[0], int(planes[1]["data"][0]), pitch[1]
    luma = int(frame.GetPtrToPlane(0))
    return luma, width, luma + width * height, width


class NvdecSource(Source):
    """One NVDEC decoder fed by PyNvVideoCodec's FFmpeg demuxer (files and RTSP/HTTP URLs);
    `retrieve()` returns each frame as an Nv12Surface in GPU memory.

    Should the device frames fail before the first one is handed on (a PyNvVideoCodec
    whose frames this code cannot read), the source reopens with frames in host memory,
    converted to BGR by OpenCV, and says so once in the log and in `note`."""

    decode = "gpu"

    def __init__(self, nvc, cfg: StreamConfig, device: int = 0):
        from edgeinfer.runtime.gpu.memory import Stream, primary_context, use_device

        self.cfg = cfg
        self._nvc = nvc
        self.is_file = source_kind(cfg.source) == SOURCE_FILE
        self.device = device
        use_device(self.device)
        self._context = primary_context(self.device)
        self._stream = Stream(self.device)
        self._pool = None
        self.on_device = True
        self.note = ""
        self._handed_on = 0
        self._open()

    def _open(self) -> None:
        nvc = self._nvc
        try:
            self._demuxer = nvc.CreateDemuxer(filename=self.cfg.source)
            context, stream = (self._context, self._stream.ptr) if self.on_device else (0, 0)
            self._decoder = nvc.CreateDecoder(gpuid=self.device, codec=self._demuxer.GetNvCodecId(),
                                              cudacontext=context, cudastream=stream,
                                              usedevicememory=self.on_device)
        except Exception as exc:  # noqa: BLE001 - the library raises plain RuntimeErrors
            raise SourceError(f"{redact(self.cfg.source)}: NVDEC could not open the source: {exc}") from None
        self.native_fps = float(getattr(self._demuxer, "FrameRate", lambda: 0.0)() or 0.0)
        self._packets = iter(self._demuxer)
        self._ready: list = []
        self._grabbed = None

    @classmethod
    def open(cls, cfg: StreamConfig, device: int = 0) -> "NvdecSource":
        kind = source_kind(cfg.source)
        if kind in (SOURCE_DEVICE, SOURCE_GSTREAMER):
            raise DecoderUnavailable(f"NVDEC decodes files and network streams, not {kind} sources")
        if kind == SOURCE_FILE and not Path(cfg.source).is_file():
            raise SourceError(f"file not found: {cfg.source}")
        nvc = _nvc()
        _gpu_present()
        try:
            return cls(nvc, cfg, device)
        except SourceError:
            raise
        except Exception as exc:  # noqa: BLE001 - cuda-python missing, no device: the CPU decodes
            raise DecoderUnavailable(f"CUDA is not usable here: {exc}") from None

    def grab(self) -> None:
        while not self._ready:
            try:
                packet = next(self._packets)
            except StopIteration:
                raise SourceError("end of file" if self.is_file else "the stream ended") from None
            self._ready.extend(self._decoder.Decode(packet))
        self._grabbed = self._ready.pop(0)

    def retrieve(self) -> Union[Nv12Surface, np.ndarray]:
        """The grabbed frame, copied out of the decoder's memory (which the next decode reuses)."""
        frame = self._grabbed
        width, height = int(self._decoder.GetWidth()), int(self._decoder.GetHeight())
        if not self.on_device:
            return self._host_frame(frame, width)
        try:
            surface = self._device_frame(frame, width, height)
        except Exception as exc:  # noqa: BLE001 - CUDA or the library's frame API
            if self._handed_on:
                raise SourceError(f"NVDEC frame could not be copied: {exc}") from None
            self.on_device = False
            self.note = f"NVDEC frames come through host memory: device frames failed ({exc})"
            log.warning("stream %s: %s", self.cfg.name, self.note)
            self._open()
            return self.read()
        self._handed_on += 1
        return surface

    def _device_frame(self, frame, width: int, height: int) -> Nv12Surface:
        from edgeinfer.runtime.gpu.memory import use_device

        use_device(self.device)
        if self._pool is None or self._pool.nbytes != width * height * 3 // 2:
            if self._pool is not None:
                self._pool.close()
            self._pool = _FramePool(self.device, width * height * 3 // 2)
        pool = self._pool
        buffer = pool.take()
        luma, luma_pitch, chroma, chroma_pitch = _planes(frame, width, height)
        # The decoder reuses its frame memory: a copy of our own, rows packed (pitch = width).
        buffer.copy_2d_from_device(0, width, luma, luma_pitch, width, height, self._stream)
        buffer.copy_2d_from_device(width * height, width, chroma, chroma_pitch, width, height // 2, self._stream)
        self._stream.synchronize()
        surface = Nv12Surface(width, height, width, buffer.ptr, buffer.ptr + width * height, self.device,
                              owner=buffer, download=functools.partial(_download, buffer, width, height, self._stream))
        weakref.finalize(surface, pool.give, buffer)
        return surface

    @staticmethod
    def _host_frame(frame, width: int) -> np.ndarray:
        """A frame NVDEC decoded into host memory, as BGR (OpenCV's conversion)."""
        import cv2

        size = frame.framesize()
        nv12 = np.ctypeslib.as_array(ctypes.cast(frame.GetPtrToPlane(0), ctypes.POINTER(ctypes.c_uint8)),
                                     shape=(size,)).copy()
        return cv2.cvtColor(nv12.reshape(-1, width), cv2.COLOR_YUV2BGR_NV12)

    def rewind(self) -> bool:
        self._open()
        return True

    def close(self) -> None:
        self._ready = []
        self._decoder = self._demuxer = None
        if self._pool is not None:
            self._pool.close()  # buffers still in frames are freed when those frames go


def _download(buffer, width: int, height: int, stream) -> np.ndarray:
    """A frame's NV12 planes copied to the host: uint8 [height * 3 / 2, width]."""
    from edgeinfer.runtime.gpu.memory import use_device

    use_device(buffer.device)
    host = np.empty((height * 3 // 2, width), np.uint8)
    buffer.copy_to_host(host, host.nbytes, stream)
    stream.synchronize()
    return host
