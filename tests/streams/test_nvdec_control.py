"""The NVDEC source's own control flow, with doubles for what cannot exist here: PyNvVideoCodec
and CUDA device memory (numpy arrays stand in for both). It checks our bookkeeping around
them: frames copied out of the decoder's memory into the source's pool, the pool reusing
buffers once frames are dropped, and the fall back to host frames when device frames fail
before the first is handed on. tests/gpu/test_nv12_frames.py runs the real thing on a GPU."""
from __future__ import annotations

import gc
import itertools

import numpy as np
import pytest

from edgeinfer.config import StreamConfig
from edgeinfer.model.families.preprocess import cv2
from edgeinfer.runtime.gpu import memory
from edgeinfer.runtime.gpu.image_job import Nv12Surface
from edgeinfer.streams import nvdec
from edgeinfer.streams.sources import SourceError

W, H = 64, 48


def _nv12(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(16, 236, (H * 3 // 2, W), dtype=np.uint8)


class FakeDevice:
    """Device memory as numpy arrays by address; buffers as memory.DeviceBuffer's interface."""

    def __init__(self):
        self.memory: dict[int, np.ndarray] = {}
        self._ptrs = itertools.count(0x10000, 0x10000)
        self.allocated = 0
        device = self

        class Buffer:
            def __init__(self, nbytes, index=0):
                self.nbytes, self.device = nbytes, index
                self.ptr = device.put(np.zeros(nbytes, np.uint8))
                device.allocated += 1

            def copy_2d_from_device(self, offset, dst_pitch, src_ptr, src_pitch, width, height, stream):
                src, dst = device.at(src_ptr), device.memory[self.ptr]
                for row in range(height):
                    dst[offset + row * dst_pitch:offset + row * dst_pitch + width] = \
                        src[row * src_pitch:row * src_pitch + width]

            def copy_to_host(self, dst, nbytes, stream):
                dst.reshape(-1)[:nbytes] = device.memory[self.ptr][:nbytes]

            def close(self):
                device.memory.pop(self.ptr, None)

        class Stream:
            ptr = 5

            def __init__(self, index=0):
                pass

            def synchronize(self):
                pass

        self.Buffer, self.Stream = Buffer, Stream

    def put(self, array: np.ndarray) -> int:
        ptr = next(self._ptrs)
        self.memory[ptr] = array.reshape(-1)
        return ptr

    def at(self, ptr: int) -> np.ndarray:
        """The bytes from `ptr` on (a plane may start inside an allocation)."""
        base = max(p for p in self.memory if p <= ptr)
        return self.memory[base][ptr - base:]

    def install(self, monkeypatch):
        monkeypatch.setattr(memory, "DeviceBuffer", self.Buffer)
        monkeypatch.setattr(memory, "Stream", self.Stream)
        monkeypatch.setattr(memory, "use_device", lambda index=0: None)
        monkeypatch.setattr(memory, "primary_context", lambda index=0: 0xC0)


class FakeFrame:
    """A decoded frame: in device memory (planes with a pitch wider than the frame, as NVDEC's
    surfaces have) or in host memory (packed NV12)."""

    def __init__(self, device: FakeDevice, nv12: np.ndarray, on_device: bool, broken: bool):
        self.nv12, self.broken = nv12, broken
        if on_device:
            pitch = W + 32
            padded = np.zeros((H * 3 // 2, pitch), np.uint8)
            padded[:, :W] = nv12
            self.luma = device.put(padded[:H].copy())
            self.chroma = device.put(padded[H:].copy())
            self.pitch = pitch

    def cuda(self):
        if self.broken:
            raise RuntimeError("no CUDA array interface in this build")
        plane = lambda ptr, rows: type("Plane", (), {"__cuda_array_interface__": {  # noqa: E731
            "data": (ptr, False), "shape": (rows, W), "strides": (self.pitch, 1), "typestr": "|u1"}})()
        return [plane(self.luma, H), plane(self.chroma, H // 2)]

    def framesize(self):
        return self.nv12.nbytes

    def GetPtrToPlane(self, index):  # noqa: N802 - the library's name
        return self.nv12.ctypes.data


class FakeNvc:
    """PyNvVideoCodec: a demuxer of `frames` packets and a decoder giving one frame per packet."""

    def __init__(self, device: FakeDevice, frames: int = 6, broken: bool = False):
        self.device, self.frames, self.broken = device, frames, broken
        self.decoders: list[dict] = []

    def CreateDemuxer(self, filename):  # noqa: N802
        nvc = self

        class Demuxer:
            def GetNvCodecId(self):  # noqa: N802
                return 4

            def FrameRate(self):  # noqa: N802
                return 30.0

            def __iter__(self):
                return iter(range(nvc.frames))

        return Demuxer()

    def CreateDecoder(self, **kw):  # noqa: N802
        self.decoders.append(kw)
        nvc = self

        class Decoder:
            def Decode(self, packet):  # noqa: N802
                return [FakeFrame(nvc.device, _nv12(packet), kw["usedevicememory"], nvc.broken)]

            def GetWidth(self):  # noqa: N802
                return W

            def GetHeight(self):  # noqa: N802
                return H

        return Decoder()


@pytest.fixture
def device(monkeypatch):
    d = FakeDevice()
    d.install(monkeypatch)
    return d


def _source(nvc, tmp_path) -> nvdec.NvdecSource:
    video = tmp_path / "cam.mp4"
    video.write_bytes(b"\x00")
    return nvdec.NvdecSource(nvc, StreamConfig(name="cam", source=str(video), model="faces", decode="gpu"))


def test_frames_are_copied_out_of_the_decoder_into_the_pool_and_read_back_exactly(device, tmp_path):
    nvc = FakeNvc(device)
    source = _source(nvc, tmp_path)
    assert nvc.decoders[0]["usedevicememory"] is True and nvc.decoders[0]["cudacontext"] == 0xC0
    for i in range(3):
        frame = source.read()
        assert isinstance(frame, Nv12Surface) and (frame.width, frame.height, frame.pitch) == (W, H, W)
        assert frame.chroma == frame.luma + W * H  # packed: the kernel reads rows W bytes apart
        np.testing.assert_array_equal(frame.download(), _nv12(i))  # the decoder's pitch removed
        np.testing.assert_array_equal(frame.to_bgr(), cv2.cvtColor(_nv12(i), cv2.COLOR_YUV2BGR_NV12))
    source.close()


def test_a_dropped_frame_gives_its_buffer_back_to_the_pool(device, tmp_path):
    source = _source(FakeNvc(device, frames=20), tmp_path)
    held = source.read()
    for _ in range(15):
        source.read()  # each dropped at once, as the capture drops late frames
        gc.collect()
    assert device.allocated <= 3  # the held frame's buffer and one or two reused, not one per frame
    np.testing.assert_array_equal(held.download(), _nv12(0))  # never overwritten while held
    source.close()


def test_device_frames_failing_at_the_first_frame_fall_back_to_host_frames(device, tmp_path):
    nvc = FakeNvc(device, broken=True)
    source = _source(nvc, tmp_path)
    frame = source.read()
    assert isinstance(frame, np.ndarray) and frame.shape == (H, W, 3)
    np.testing.assert_array_equal(frame, cv2.cvtColor(_nv12(0), cv2.COLOR_YUV2BGR_NV12))  # from the start again
    assert not source.on_device and "device frames failed (no CUDA array interface" in source.note
    assert [d["usedevicememory"] for d in nvc.decoders] == [True, False]
    assert isinstance(source.read(), np.ndarray)


def test_device_frames_failing_later_end_the_connection(device, tmp_path):
    nvc = FakeNvc(device)
    source = _source(nvc, tmp_path)
    assert isinstance(source.read(), Nv12Surface)
    nvc.broken = True
    with pytest.raises(SourceError, match="NVDEC frame could not be copied"):
        source.read()


def test_nvdec_decodes_on_the_gpu_of_the_streams_model(device, tmp_path, monkeypatch):
    from edgeinfer.config import parse_config
    from edgeinfer.model.registry import ModelRegistry
    from edgeinfer.streams.manager import Stream

    used = []
    monkeypatch.setattr(memory, "use_device", lambda index=0: used.append(index))
    nvc = FakeNvc(device)
    video = tmp_path / "cam.mp4"
    video.write_bytes(b"\x00")
    source = nvdec.NvdecSource(nvc, StreamConfig(name="cam", source=str(video), model="m", decode="gpu"), device=1)
    frame = source.read()
    assert nvc.decoders[0]["gpuid"] == 1 and frame.device == 1 and set(used) == {1}
    # The daemon opens each stream's NVDEC on its model's GPU ([models.X] device, else [server] device).
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"")
    cfg = parse_config({"server": {"device": 2}, "models": [
        {"name": "a", "onnx": str(onnx), "device": 1}, {"name": "b", "onnx": str(onnx)}],
        "streams": [{"name": "s1", "source": str(video), "model": "a"}, {"name": "s2", "source": str(video), "model": "b"}]},
        check_files=False)
    registry = ModelRegistry(cfg)
    streams = [Stream(c, registry, pipeline=None) for c in cfg.streams]
    assert [s.capture.opener.keywords["device"] for s in streams] == [1, 2]
