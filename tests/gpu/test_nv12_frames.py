"""Video frames NVDEC leaves in GPU memory (NV12): converted and resized where they lie.

The CPU tests hold the NV12 kernel's numpy twin to OpenCV (colour conversion) and
the served model's handling of a GPU frame to its handling of the same pixels; the
GPU tests hold the kernel to that twin and NVDEC's frames to OpenCV's decode.
"""
from __future__ import annotations

import numpy as np
import pytest

from edgeinfer.config import InputConfig, StreamConfig, parse_config
from edgeinfer.model.families.preprocess import Preprocessor, cv2
from edgeinfer.model.served import ServedModel
from edgeinfer.model.types import GpuFrame, ModelState, RawPixels
from edgeinfer.runtime.gpu.image_job import Nv12Surface, ResizeJob
from edgeinfer.runtime.gpu.preprocess_kernel import Normalization, reference_nv12_to_bgr, reference_resize
from edgeinfer.streams.capture import Frame


def _video_frames(media, count: int = 12) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(media / "carphone_pristine.mp4"))
    frames = []
    while len(frames) < count:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(bgr)
    cap.release()
    assert len(frames) == count
    return frames


def _nv12(bgr: np.ndarray) -> np.ndarray:
    """BGR -> NV12 [H * 3 / 2, W] (OpenCV writes I420; NV12 interleaves its U and V planes)."""
    h, w = bgr.shape[:2]
    i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)
    u = i420[h:h + h // 4].reshape(h // 2, w // 2)
    v = i420[h + h // 4:].reshape(h // 2, w // 2)
    return np.concatenate([i420[:h], np.stack([u, v], axis=2).reshape(h // 2, w)])


def _host_surface(nv12: np.ndarray) -> Nv12Surface:
    """A frame whose planes live on the host: to_bgr() works as on a GPU frame (no kernel can read it)."""
    h, w = nv12.shape[0] * 2 // 3, nv12.shape[1]
    return Nv12Surface(w, h, w, 0, 0, download=lambda: nv12)


def test_the_kernels_colour_conversion_is_opencvs(media):
    rng = np.random.default_rng(7)
    frames = [_nv12(bgr) for bgr in _video_frames(media)]
    frames.append(rng.integers(0, 256, (96 * 3 // 2, 128), dtype=np.uint8))  # every saturation case
    for nv12 in frames:
        assert np.array_equal(reference_nv12_to_bgr(nv12), cv2.cvtColor(nv12, cv2.COLOR_YUV2BGR_NV12))


def test_a_gpu_frame_reaches_a_cpu_model_as_the_same_pixels(centerface_onnx, media, tmp_path):
    cfg = parse_config({"cache": {"dir": str(tmp_path)}, "models": [{
        "name": "faces", "onnx": str(centerface_onnx), "backends": ["onnxruntime"], "warmup_runs": 1,
        "input": {"color": "rgb", "resize": "letterbox", "size": [640, 480], "pad_value": 0},
        "postprocess": {"task": "centerface", "score_threshold": 0.5, "nms_iou_threshold": 0.3}}]},
        source="test_nv12_frames")
    model = ServedModel(cfg.models[0], cfg.server, tmp_path)
    model.load()
    assert model.state is ModelState.READY, model.state_reason
    try:
        nv12 = _nv12(_video_frames(media, 1)[0])
        bgr = cv2.cvtColor(nv12, cv2.COLOR_YUV2BGR_NV12)
        frame = Frame(0, _host_surface(nv12), 0.0, 0.0)
        assert frame.size == (176, 144) and np.array_equal(frame.image, bgr)
        from_frame = model.prepare(GpuFrame(frame.pixels))
        from_pixels = model.prepare(RawPixels(144, 176, "bgr", bgr.tobytes()))
        assert from_frame.image_size == from_pixels.image_size == (176, 144)
        for name, feed in from_pixels.feeds.items():
            assert np.array_equal(from_frame.feeds[name], feed)
    finally:
        model.unload()


# -- on the GPU ------------------------------------------------------------------------------

PLANS = {  # (source size, input config): upscaled and letterboxed; downscaled (area) and cropped
    "letterbox-up": ((176, 144), dict(resize="letterbox", size=[640, 480], pad_value=114, color="rgb")),
    "crop-down": ((1920, 1080), dict(resize="center-crop", size=[224, 224], color="rgb",
                                     mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], scale=1 / 255)),
    "stretch-bgr": ((640, 360), dict(resize="stretch", size=[320, 320], color="bgr")),
}


@pytest.mark.parametrize("plan", sorted(PLANS))
def test_the_nv12_kernel_equals_its_numpy_twin(plan, cuda_device, stream, media):
    from edgeinfer.runtime.gpu.preprocess_kernel import PreprocessKernel

    (w, h), table = PLANS[plan]
    cfg = InputConfig(**table)
    pre, norm = Preprocessor(cfg), Normalization.from_input_config(cfg)
    kernel = PreprocessKernel(cuda_device)
    try:
        for bgr in _video_frames(media, 3):
            nv12 = _nv12(cv2.resize(bgr, (w, h), interpolation=cv2.INTER_CUBIC))
            p = pre.resize_plan(w, h)
            job = ResizeJob(1, w, h, p.resized_w, p.resized_h, p.dx, p.dy, swap_rb=cfg.color == "rgb",
                            frame=_host_surface(nv12))
            gpu = kernel.nv12_resize_normalize(nv12, job, (pre.height, pre.width), norm, cfg.pad_value, stream)[0]
            twin = reference_resize(reference_nv12_to_bgr(nv12), job, (pre.height, pre.width), norm, cfg.pad_value)
            levels = np.abs(gpu - twin) / np.abs(np.asarray(norm.mul, np.float32))[:, None, None]
            assert levels.max() <= 1.01, (plan, levels.max())
            assert (levels > 0.01).mean() < 0.01
    finally:
        kernel.close()


@pytest.fixture(scope="module")
def nvdec():
    try:
        import PyNvVideoCodec  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"PyNvVideoCodec is not installed: {exc}")


def test_nvdec_frames_stay_on_the_gpu_and_match_opencvs_decode(nvdec, cuda_device, stream, media):
    from edgeinfer.runtime.gpu.preprocess_kernel import PreprocessKernel
    from edgeinfer.streams.nvdec import NvdecSource

    source = NvdecSource.open(StreamConfig(name="cam", source=str(media / "carphone_pristine.mp4"), model="faces",
                                           decode="gpu"))
    cfg = InputConfig(resize="letterbox", size=[640, 480], pad_value=0, color="rgb")
    pre, norm = Preprocessor(cfg), Normalization.from_input_config(cfg)
    kernel = PreprocessKernel(cuda_device)
    try:
        for i, cpu in enumerate(_video_frames(media, 30)):
            frame = source.read()
            assert isinstance(frame, Nv12Surface) and (frame.width, frame.height) == (176, 144)
            assert np.abs(frame.to_bgr().astype(int) - cpu).mean() < 3.0, i
            p = pre.resize_plan(176, 144)
            job = ResizeJob(1, 176, 144, p.resized_w, p.resized_h, p.dx, p.dy, swap_rb=True, frame=frame)
            from edgeinfer.runtime.gpu.memory import DeviceArray, DeviceBuffer

            with DeviceBuffer(3 * 480 * 640 * 4, cuda_device) as out:
                dst = DeviceArray(out, np.float32, (1, 3, 480, 640))
                kernel.launch_nv12_resize(frame, job, dst, 0, norm, 0.0, stream)
                gpu = dst.to_host(stream)[0]
            twin = reference_resize(reference_nv12_to_bgr(frame.download()), job, (480, 640), norm, 0.0)
            assert np.abs(gpu - twin).max() / norm.mul[0] <= 1.01, i
    finally:
        kernel.close()
        source.close()


def test_a_detector_on_the_gpu_takes_nvdec_frames_without_a_host_copy(nvdec, ort_cuda, centerface_onnx, media,
                                                                        tmp_path):
    from edgeinfer.model.families.postprocess import Options
    from edgeinfer.streams.nvdec import NvdecSource

    table = {"name": "faces", "onnx": str(centerface_onnx), "backends": ["onnxruntime"], "warmup_runs": 1,
             "input": {"color": "rgb", "resize": "letterbox", "size": [640, 480], "pad_value": 0, "decode": "gpu"},
             "onnxruntime": {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]},
             "postprocess": {"task": "centerface", "score_threshold": 0.5, "nms_iou_threshold": 0.3}}
    cfg = parse_config({"cache": {"dir": str(tmp_path)}, "models": [table]}, source="test_nv12_frames")
    model = ServedModel(cfg.models[0], cfg.server, tmp_path)
    model.load()
    assert model.state is ModelState.READY and model.decode_on_gpu, model.state_reason
    source = NvdecSource.open(StreamConfig(name="cam", source=str(media / "carphone_pristine.mp4"), model="faces",
                                           decode="gpu"))
    try:
        with_faces = 0
        for _ in range(30):
            frame = source.read()
            downloads = []
            watched = Nv12Surface(frame.width, frame.height, frame.pitch, frame.luma, frame.chroma, frame.device,
                                  owner=frame, download=lambda f=frame: downloads.append(1) or f.download())
            on_gpu = model.predict(GpuFrame(watched), Options())
            on_cpu = model.predict(RawPixels(frame.height, frame.width, "bgr", frame.to_bgr().tobytes()), Options())
            assert not downloads  # the model read the frame where NVDEC left it
            assert len(on_gpu.result.detections) == len(on_cpu.result.detections)
            for a, b in zip(on_gpu.result.detections, on_cpu.result.detections):
                assert np.abs(np.subtract(a.box, b.box)).max() < 3.0
            with_faces += bool(on_gpu.result.detections)
        assert with_faces >= 28
    finally:
        source.close()
        model.unload()
