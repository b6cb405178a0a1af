"""Optional GPU decode: NVDEC through PyNvVideoCodec (`decode = "gpu"` or `"auto"`).

Kept apart from the CPU path: it is imported only when a stream asks for it, and
every reason it cannot run (library absent, no NVIDIA GPU, a source NVDEC cannot
demux) is a `DecoderUnavailable` whose message the stream's state shows while the
CPU decodes instead.

Frames are decoded by NVDEC into host memory as NV12 and converted to BGR with
OpenCV, so they enter the same serving path as CPU-decoded frames. Not yet run on
a GPU machine: see docs/streams.md.
"""
from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import cv2
import numpy as np

from edgeinfer.config import StreamConfig
from edgeinfer.streams.sources import DEVICE, FILE, GSTREAMER, Source, SourceError, kind_of, redact


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


class NvdecSource(Source):
    """One NVDEC decoder fed by PyNvVideoCodec's FFmpeg demuxer (files and RTSP/HTTP URLs)."""

    decode = "gpu"

    def __init__(self, nvc, cfg: StreamConfig):
        self.cfg = cfg
        self._nvc = nvc
        self.is_file = kind_of(cfg.source) == FILE
        self._open()

    def _open(self) -> None:
        nvc = self._nvc
        try:
            self._demuxer = nvc.CreateDemuxer(filename=self.cfg.source)
            self._decoder = nvc.CreateDecoder(gpuid=0, codec=self._demuxer.GetNvCodecId(),
                                              cudacontext=0, cudastream=0, usedevicememory=False)
        except Exception as exc:  # noqa: BLE001 - the library raises plain RuntimeErrors
            raise SourceError(f"{redact(self.cfg.source)}: NVDEC could not open the source: {exc}") from None
        self.native_fps = float(getattr(self._demuxer, "FrameRate", lambda: 0.0)() or 0.0)
        self._packets = iter(self._demuxer)
        self._ready: list = []
        self._lock = threading.Lock()

    @classmethod
    def open(cls, cfg: StreamConfig) -> "NvdecSource":
        kind = kind_of(cfg.source)
        if kind in (DEVICE, GSTREAMER):
            raise DecoderUnavailable(f"NVDEC decodes files and network streams, not {kind} sources")
        if kind == FILE and not Path(cfg.source).is_file():
            raise SourceError(f"file not found: {cfg.source}")
        nvc = _nvc()
        _gpu_present()
        return cls(nvc, cfg)

    def read(self) -> np.ndarray:
        while not self._ready:
            try:
                packet = next(self._packets)
            except StopIteration:
                raise SourceError("end of file" if self.is_file else "the stream ended") from None
            self._ready.extend(self._decoder.Decode(packet))
        frame = self._ready.pop(0)
        size = frame.framesize()
        nv12 = np.ctypeslib.as_array(ctypes.cast(frame.GetPtrToPlane(0), ctypes.POINTER(ctypes.c_uint8)),
                                     shape=(size,)).copy()
        width = self._decoder.GetWidth()
        return cv2.cvtColor(nv12.reshape(-1, width), cv2.COLOR_YUV2BGR_NV12)

    def rewind(self) -> bool:
        self._open()
        return True

    def close(self) -> None:
        self._ready = []
        self._decoder = self._demuxer = None
