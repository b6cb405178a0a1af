"""decode = "gpu": the parts that run without a GPU. The resize plan both paths share, the EXIF
orientation the plan reads from the header, the numpy twin of the resize kernel held to the CPU
path on the test photos, and the fallback to the CPU (with its reason) where no GPU serves."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from edgeinfer.config import InputConfig, parse_config
from edgeinfer.errors import ConfigError, InvalidInput
from edgeinfer.model.families.preprocess import Preprocessor, cv2, jpeg_orientation
from edgeinfer.model.families.postprocess import Options
from edgeinfer.model.served import ServedModel
from edgeinfer.model.types import EncodedImage, ModelState
from edgeinfer.runtime.gpu.image_job import ResizeJob, job_batch
from edgeinfer.runtime.gpu.preprocess_kernel import Normalization, reference_resize

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "camera.png")
MODES = {
    "center-crop": dict(resize="center-crop", size=[224, 224], mean=[127.0] * 3, std=[128.0] * 3),
    "letterbox": dict(resize="letterbox", size=[640, 480], pad_value=0),
    "stretch": dict(resize="stretch", size=[160, 96], color="bgr", scale=1 / 255),
}


def _jpeg(img: np.ndarray, quality: int = 92) -> bytes:
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def _with_orientation(jpeg: bytes, orientation: int, big_endian: bool = False) -> bytes:
    """`jpeg` with an APP1 EXIF segment (IFD0: Orientation) right after its SOI marker."""
    o = ">" if big_endian else "<"
    tiff = (b"MM" if big_endian else b"II") + struct.pack(o + "HI", 42, 8) + struct.pack(o + "H", 1) + \
        struct.pack(o + "HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(o + "I", 0)
    body = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def _job_for(pre: Preprocessor, data: bytes, model_rgb: bool) -> tuple[ResizeJob, object]:
    e = pre.plan_encoded(data)
    p = e.plan
    return ResizeJob(e.reduce, p.width, p.height, p.resized_w, p.resized_h, p.dx, p.dy, swap_rb=not model_rgb,
                     data=data), e.transform


@pytest.mark.parametrize("mode", sorted(MODES))
def test_the_plan_is_the_cpu_paths_geometry(mode, media):
    """plan_encoded (no decode) gives the transform decode_for_model + geometry give, reduced decode included."""
    pre = Preprocessor(InputConfig(**MODES[mode]))
    big = cv2.resize(cv2.imread(str(media / "astronaut.png")), (1920, 1080))
    for data in [_jpeg(cv2.imread(str(media / p))) for p in PHOTOS] + [_jpeg(big)]:
        bgr, reduced = pre.decode_for_model(data)
        img, transform = pre.geometry(bgr, reduced=reduced)
        e = pre.plan_encoded(data)
        assert e.transform == transform
        assert (e.plan.width, e.plan.height) == (bgr.shape[1], bgr.shape[0])  # the reduced decode's size
        assert e.reduce == (reduced.factor if reduced else 1)
        assert img.shape[:2] == (pre.height, pre.width)
    assert pre.plan_encoded(_jpeg(big)).reduce > 1 or mode == "stretch" and pre.width > 960


def test_exif_orientation_is_read_and_rotates_the_plan(media):
    base = _jpeg(cv2.resize(cv2.imread(str(media / "chelsea.png")), (600, 400)))
    assert jpeg_orientation(base) == 1
    pre = Preprocessor(InputConfig(resize="letterbox", size=[640, 480]))
    for orientation, big_endian in ((6, False), (8, True), (3, False)):
        data = _with_orientation(base, orientation, big_endian)
        assert jpeg_orientation(data) == orientation
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # OpenCV turns it
        e = pre.plan_encoded(data)
        assert (e.width, e.height) == (decoded.shape[1], decoded.shape[0])
        _, transform = pre(decoded)
        assert e.transform == transform


def test_a_truncated_or_oversized_jpeg_is_refused_before_the_gpu(media):
    pre = Preprocessor(InputConfig(), max_pixels=100_000)
    data = _jpeg(cv2.imread(str(media / "chelsea.png")))
    with pytest.raises(InvalidInput, match="truncated"):
        Preprocessor(InputConfig()).plan_encoded(data[: len(data) // 2])
    with pytest.raises(InvalidInput, match="over the limit"):
        pre.plan_encoded(data)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_the_kernels_numpy_twin_matches_the_cpu_path(mode, media):
    """reference_resize (the kernel's arithmetic) against OpenCV's decode+resize+normalize on the photos.

    Stated tolerance, in 0-255 levels: a full-size decode within 1 level everywhere but a few pixels
    (cv2 rounds its bilinear weights to 11 bits), mean under 0.2; a reduced decode (the GPU averages
    k x k blocks where libjpeg scales its IDCT) mean under 0.7 and at most 6% of values more than
    2 levels apart (measured: 0.63 and 5.5% on astronaut.png, the most detailed photo).
    """
    cfg = InputConfig(**MODES[mode])
    pre = Preprocessor(cfg)
    norm = Normalization.from_input_config(cfg)
    big = cv2.resize(cv2.imread(str(media / "coffee.png")), (1920, 1280))
    for data in [_jpeg(cv2.imread(str(media / p))) for p in PHOTOS] + [_jpeg(big)]:
        cpu, _ = pre(*pre.decode_for_model(data))
        job, _ = _job_for(pre, data, cfg.color == "rgb")
        rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        twin = reference_resize(rgb, job, (pre.height, pre.width), norm, cfg.pad_value)
        assert twin.shape == cpu.shape and twin.dtype == np.float32
        levels = np.abs(twin - cpu) / np.abs(np.asarray(norm.mul, np.float32))[:, None, None]
        if job.reduce == 1:
            assert levels.mean() < 0.2 and (levels > 1.01).mean() < 0.001, (mode, levels.mean())
        else:
            assert levels.mean() < 0.7 and (levels > 2.01).mean() < 0.06, (mode, levels.mean())


def test_the_kernels_numpy_twin_gives_the_cpu_paths_top1(classifier_onnx, media):
    """EfficientNet-Lite0 on the twin's tensors answers the photos with the CPU path's top-1."""
    import onnxruntime as ort

    cfg = InputConfig(**MODES["center-crop"])
    pre = Preprocessor(cfg)
    norm = Normalization.from_input_config(cfg)
    session = ort.InferenceSession(str(classifier_onnx), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for p in PHOTOS:
        data = _jpeg(cv2.imread(str(media / p)))
        cpu, _ = pre(*pre.decode_for_model(data))
        job, _ = _job_for(pre, data, True)
        rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        twin = reference_resize(rgb, job, (224, 224), norm, cfg.pad_value)
        a, b = (session.run(None, {name: t[None]})[0][0] for t in (cpu, twin))
        assert a.argmax() == b.argmax(), p


def test_resize_jobs_need_data_pixels_or_a_frame():
    with pytest.raises(ValueError, match="encoded data, pixels or a frame"):
        ResizeJob(1, 2, 2, 2, 2, 0, 0, False)
    with pytest.raises(ValueError, match="reduce"):
        ResizeJob(3, 2, 2, 2, 2, 0, 0, False, data=b"x")
    jobs = job_batch([ResizeJob(1, 2, 2, 2, 2, 0, 0, False, data=b"x")] * 2)
    assert jobs.dtype == object and jobs.shape == (2,)


def test_decode_is_validated():
    with pytest.raises(ConfigError, match="decode"):
        parse_config({"models": [{"name": "m", "onnx": "m.onnx", "input": {"decode": "tpu"}}]}, source="t",
                     check_files=False)
    assert parse_config({"models": [{"name": "m", "onnx": "m.onnx", "input": {"decode": "auto"}}]},
                        source="t", check_files=False).models[0].input.decode == "auto"
    assert InputConfig().decode == "cpu"


@pytest.mark.parametrize("decode", ["gpu", "auto"])
def test_without_a_gpu_the_cpu_decodes_and_the_state_says_why(decode, classifier_onnx, media, tmp_path):
    cfg = parse_config({"cache": {"dir": str(tmp_path)}, "models": [
        {"name": "imagenet", "onnx": str(classifier_onnx), "backends": ["onnxruntime"], "warmup_runs": 1,
         "input": {"resize": "center-crop", "size": [224, 224], "mean": [127.0] * 3, "std": [128.0] * 3,
                   "decode": decode},
         "postprocess": {"task": "classification", "top_k": 3}}]}, source="test")
    model = ServedModel(cfg.models[0], cfg.server, tmp_path)
    model.load()
    try:
        assert model.state is ModelState.READY, model.state_reason
        assert not model.decode_on_gpu
        assert f"decode on cpu ({decode} asked for: needs ONNX Runtime's CUDA provider" in model.state_reason
        assert model.runner.info.details["decode_on"].startswith("cpu")
        answer = model.predict(EncodedImage((media / "coffee.png").read_bytes()), Options())
        assert answer.result.classes[0].index == 967  # espresso, as the CPU path answers
    finally:
        model.unload()
