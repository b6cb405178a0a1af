"""decode = "gpu": nvImageCodec decodes into device memory, the NVRTC kernel resizes and normalizes into the
model input, and the served model answers as the CPU path does.

Stated tolerances (0-255 levels): the kernel against its numpy twin (runtime/gpu/preprocess_kernel.py
reference_resize) within 1 level (float32 against float64 at rounding boundaries); nvImageCodec's decode
against OpenCV's mean under 1.5 levels (different IDCTs and chroma upsampling); the served answers: the
same top-1 class on every test photo, and CenterFace's boxes at IoU >= 0.9 with the CPU path's.
"""
from __future__ import annotations

import struct

import numpy as np
import pytest

from edgeinfer.config import InputConfig, parse_config
from edgeinfer.model.families.postprocess import Options
from edgeinfer.model.families.preprocess import Preprocessor, cv2
from edgeinfer.model.served import ServedModel
from edgeinfer.model.types import EncodedImage, ModelState, RawPixels
from edgeinfer.runtime.gpu.image_job import ResizeJob
from edgeinfer.runtime.gpu.preprocess_kernel import Normalization, reference_resize

pytestmark = pytest.mark.gpu

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "camera.png")
MODES = {
    "center-crop": dict(resize="center-crop", size=[224, 224], mean=[127.0] * 3, std=[128.0] * 3),
    "letterbox": dict(resize="letterbox", size=[640, 480], pad_value=0),
    "stretch": dict(resize="stretch", size=[160, 96], color="bgr", scale=1 / 255),
}


@pytest.fixture(scope="module")
def nvimgcodec():
    try:
        from edgeinfer.runtime.gpu.decoding_runner import nvimgcodec as load

        return load()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"nvImageCodec is not installed: {exc}")


def _jpeg(img: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()


def _photos(media) -> list[bytes]:
    big = cv2.resize(cv2.imread(str(media / "coffee.png")), (1920, 1280))
    return [_jpeg(cv2.imread(str(media / p))) for p in PHOTOS] + [_jpeg(big)]


def _job(pre: Preprocessor, data: bytes, model_rgb: bool) -> ResizeJob:
    e = pre.plan_encoded(data)
    p = e.plan
    return ResizeJob(e.reduce, p.width, p.height, p.resized_w, p.resized_h, p.dx, p.dy, swap_rb=not model_rgb,
                     data=data)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_the_resize_kernel_equals_its_numpy_twin(mode, cuda_device, stream, media):
    from edgeinfer.runtime.gpu.preprocess_kernel import PreprocessKernel

    cfg = InputConfig(**MODES[mode])
    pre, norm = Preprocessor(cfg), Normalization.from_input_config(cfg)
    kernel = PreprocessKernel(cuda_device)
    try:
        for data in _photos(media):
            job = _job(pre, data, cfg.color == "rgb")
            rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            gpu = kernel.resize_normalize(rgb, job, (pre.height, pre.width), norm, cfg.pad_value, stream)[0]
            twin = reference_resize(rgb, job, (pre.height, pre.width), norm, cfg.pad_value)
            levels = np.abs(gpu - twin) / np.abs(np.asarray(norm.mul, np.float32))[:, None, None]
            assert levels.max() <= 1.01, (mode, job.reduce, levels.max())
            assert (levels > 0.01).mean() < 0.01
    finally:
        kernel.close()


def test_nvimgcodec_decodes_like_opencv(nvimgcodec, cuda_device, media):
    from edgeinfer.runtime.gpu.decoding_runner import _DecodeSlot, device_image
    from edgeinfer.runtime.gpu.memory import DeviceArray

    slot = _DecodeSlot(cuda_device)
    try:
        datas = _photos(media)
        images = slot.decode(datas)
        for data, image in zip(datas, images):
            assert image is not None
            ptr, (h, w, c), row = device_image(image)
            assert c == 3 and row == w * 3
            host = DeviceArray(_Borrowed(ptr, h * row), np.uint8, (h, w, c)).to_host(slot.stream)
            cpu = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            assert host.shape == cpu.shape
            assert np.abs(host.astype(int) - cpu).mean() < 1.5
    finally:
        slot.close()


class _Borrowed:
    """A DeviceBuffer stand-in over memory nvImageCodec owns (DeviceArray reads .ptr and .nbytes only)."""

    def __init__(self, ptr: int, nbytes: int):
        self.ptr, self.nbytes = ptr, nbytes


def _served(onnx_path, tmp_path, kind: str, decode: str) -> ServedModel:
    if kind == "imagenet":
        table = {"name": "imagenet", "input": dict(MODES["center-crop"], decode=decode),
                 "postprocess": {"task": "classification", "top_k": 5}}
    else:
        table = {"name": "faces", "input": {"resize": "letterbox", "size": [640, 480], "pad_value": 0,
                                            "decode": decode},
                 "postprocess": {"task": "centerface", "score_threshold": 0.5, "nms_iou_threshold": 0.3}}
    table.update(onnx=str(onnx_path), backends=["onnxruntime"], warmup_runs=1,
                 onnxruntime={"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]},
                 batching={"max_batch": 4})
    cfg = parse_config({"cache": {"dir": str(tmp_path / decode)}, "models": [table]}, source="test_decode_on_gpu")
    model = ServedModel(cfg.models[0], cfg.server, tmp_path / decode)
    model.load()
    assert model.state is ModelState.READY, model.state_reason
    return model


def _with_orientation(jpeg: bytes, orientation: int) -> bytes:
    tiff = b"II" + struct.pack("<HI", 42, 8) + struct.pack("<H", 1) + \
        struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    body = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def test_served_classifier_gives_the_cpu_paths_top1(ort_cuda, nvimgcodec, classifier_onnx, media, tmp_path):
    from edgeinfer.runtime.gpu.decoding_runner import GpuDecodingRunner

    gpu = _served(classifier_onnx, tmp_path, "imagenet", "gpu")
    cpu = _served(classifier_onnx, tmp_path, "imagenet", "cpu")
    try:
        assert isinstance(gpu.runner, GpuDecodingRunner) and gpu.decode_on_gpu
        assert "decode on gpu (nvImageCodec" in gpu.state_reason
        datas = _photos(media) + [(media / p).read_bytes() for p in PHOTOS]  # JPEGs and the PNGs as sent
        for data in datas:
            a, b = gpu.predict(EncodedImage(data), Options()), cpu.predict(EncodedImage(data), Options())
            assert a.result.classes[0].index == b.result.classes[0].index
            assert abs(a.result.classes[0].score - b.result.classes[0].score) < 0.05
        # raw pixels: resized and normalized on the GPU too
        rgb = cv2.cvtColor(cv2.imread(str(media / "coffee.png")), cv2.COLOR_BGR2RGB)
        raw = RawPixels(rgb.shape[0], rgb.shape[1], "rgb", rgb.tobytes())
        assert gpu.predict(raw, Options()).result.classes[0].index == cpu.predict(raw, Options()).result.classes[0].index
        # a batch of jobs (what the batcher stacks, padding repeats the last) equals one image at a time
        prepared = [gpu.prepare(EncodedImage(d)) for d in datas[:3]]
        name = gpu.image_input.name
        batch = np.concatenate([p.feeds[name] for p in prepared] + [prepared[-1].feeds[name]])
        together = gpu.runner.infer({name: batch})
        for k, p in enumerate(prepared):
            alone = gpu.runner.infer(p.feeds)
            for out, arr in alone.items():
                assert together[out][k].argmax() == arr[0].argmax()
    finally:
        gpu.unload()
        cpu.unload()


def test_served_detector_boxes_map_to_the_sent_pixels_with_exif(ort_cuda, nvimgcodec, centerface_onnx, media,
                                                                tmp_path):
    gpu = _served(centerface_onnx, tmp_path, "faces", "gpu")
    cpu = _served(centerface_onnx, tmp_path, "faces", "cpu")
    try:
        assert gpu.decode_on_gpu
        base = _jpeg(cv2.imread(str(media / "astronaut.png")))
        for data in (base, _with_orientation(base, 6)):
            a, b = gpu.predict(EncodedImage(data), Options()), cpu.predict(EncodedImage(data), Options())
            assert a.image_size == b.image_size
            assert len(a.result.detections) == len(b.result.detections) >= 1
            for da, db in zip(a.result.detections, b.result.detections):
                assert _iou(da.box, db.box) >= 0.9
    finally:
        gpu.unload()
        cpu.unload()


def _iou(a, b) -> float:
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    iw, ih = max(0.0, min(ax2, bx2) - max(ax1, bx1)), max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    return inter / ((ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter)
