"""Acceptance: real daemon, real models, real photos, real client calls."""
from __future__ import annotations

import asyncio

import cv2
import numpy as np
import pytest

from edgeinfer_client import AsyncClient, StreamError

CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def _letterbox(bgr: np.ndarray, w: int, h: int):
    """Independent letterbox (not the daemon's code): returns tensor and (scale, dx, dy)."""
    ih, iw = bgr.shape[:2]
    r = min(w / iw, h / ih)
    nw, nh = round(iw * r), round(ih * r)
    canvas = np.zeros((h, w, 3), np.uint8)
    dx, dy = (w - nw) // 2, (h - nh) // 2
    canvas[dy:dy + nh, dx:dx + nw] = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_AREA)
    rgb = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB).astype(np.float32)
    return rgb.transpose(2, 0, 1)[None].copy(), (nw / iw, nh / ih, dx, dy)


def _reference_faces(onnx_path, bgr, threshold=0.5):
    """Faces by OpenCV's own ONNX importer + a plain decode written here, not the daemon's."""
    blob, (sx, sy, dx, dy) = _letterbox(bgr, 640, 480)
    net = cv2.dnn.readNetFromONNX(str(onnx_path))
    net.setInput(blob)
    heat, scale, offset, _ = net.forward(net.getUnconnectedOutLayersNames())
    faces = []
    hm = heat[0, 0]
    for r, c in zip(*np.nonzero(hm > threshold)):
        # keep only local maxima (one face -> one peak)
        if hm[r, c] < hm[max(r - 2, 0):r + 3, max(c - 2, 0):c + 3].max():
            continue
        h = np.exp(scale[0, 0, r, c]) * 4
        w = np.exp(scale[0, 1, r, c]) * 4
        cx = (c + offset[0, 1, r, c] + 0.5) * 4
        cy = (r + offset[0, 0, r, c] + 0.5) * 4
        x1, y1 = cx - w / 2, cy - h / 2
        faces.append(((x1 - dx) / sx, (y1 - dy) / sy, (x1 + w - dx) / sx, (y1 + h - dy) / sy, hm[r, c]))
    return faces


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_one_face_on_astronaut_boxed_like_the_reference(client, media, centerface_onnx):
    result = client.infer("faces", media / "astronaut.png")
    assert len(result.detections) == 1, result.detections
    face = result.detections[0]
    assert face.label == "face" and face.score > 0.8
    # The astronaut's face sits around x 180-270, y 55-180 of the 512x512 photo.
    x1, y1, x2, y2 = face.box
    assert 150 < x1 < 210 and 230 < x2 < 300 and 30 < y1 < 90 and 150 < y2 < 210, face.box
    assert len(face.landmarks) == 5
    for lx, ly in face.landmarks:
        assert x1 - 5 <= lx <= x2 + 5 and y1 - 5 <= ly <= y2 + 5
    ref = _reference_faces(centerface_onnx, cv2.imread(str(media / "astronaut.png")))
    assert len(ref) == 1
    assert _iou(face.box, ref[0][:4]) > 0.95, (face.box, ref[0])
    assert abs(face.score - ref[0][4]) < 0.01
    assert result.image_size == (512, 512)
    assert result.timing_us["inference"] > 0 and result.timing_us["total"] >= result.timing_us["inference"]


@pytest.mark.parametrize("photo", ["coffee.png", "chelsea.png"])
def test_no_face_where_there_is_none(client, media, photo):
    assert client.infer("faces", media / photo).detections == []


def test_cat_in_top3_for_chelsea(client, media, classifier_onnx):
    result = client.infer("imagenet", media / "chelsea.png", top_k=3)
    assert len(result.classes) == 3
    assert CAT_CLASSES & {c.index for c in result.classes}, result.classes
    assert all(c.label for c in result.classes)
    assert result.classes[0].score >= result.classes[1].score >= result.classes[2].score


def test_espresso_first_for_coffee(client, media, classifier_onnx):
    result = client.infer("imagenet", media / "coffee.png")
    assert result.classes[0].index == ESPRESSO and result.classes[0].label == "espresso"
    assert result.classes[0].score > 0.8


def test_raw_pixels_give_the_same_answers(client, media, classifier_onnx):
    bgr = cv2.imread(str(media / "astronaut.png"))
    from_bytes = client.infer("faces", media / "astronaut.png").detections[0]
    from_bgr = client.infer("faces", bgr, pixel_format="bgr").detections[0]
    from_rgb = client.infer("faces", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), pixel_format="rgb").detections[0]
    np.testing.assert_allclose(from_bgr.box, from_bytes.box, atol=0.5)
    np.testing.assert_allclose(from_rgb.box, from_bytes.box, atol=0.5)
    coffee = cv2.imread(str(media / "coffee.png"))
    assert client.infer("imagenet", coffee, pixel_format="bgr").classes[0].index == ESPRESSO
    rgba = cv2.cvtColor(coffee, cv2.COLOR_BGR2RGBA)
    assert client.infer("imagenet", rgba, pixel_format="rgba").classes[0].index == ESPRESSO


def test_jpeg_and_webp_encodings(client, media):
    bgr = cv2.imread(str(media / "astronaut.png"))
    for ext in (".jpg", ".webp", ".bmp"):
        ok, buf = cv2.imencode(ext, bgr)
        assert ok
        dets = client.infer("faces", buf.tobytes()).detections
        assert len(dets) == 1, ext


def test_async_client_gives_the_same_answers(daemon, media, classifier_onnx):
    async def main():
        async with AsyncClient(daemon.address, timeout=60) as c:
            faces, coffee = await asyncio.gather(c.infer("faces", media / "astronaut.png"),
                                                 c.infer("imagenet", media / "coffee.png"))
            models = await c.list_models()
            health = await c.health("faces")
            return faces, coffee, models, health

    faces, coffee, models, health = asyncio.run(main())
    assert len(faces.detections) == 1
    assert coffee.classes[0].index == ESPRESSO
    assert {m.name for m in models} == {"faces", "imagenet"}
    assert health == "SERVING"


@pytest.mark.slow
def test_stream_over_video_is_ordered_and_finds_the_face(client, media):
    cap = cv2.VideoCapture(str(media / "carphone_pristine.mp4"))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == 120
    results = list(client.stream("faces", frames, pixel_format="bgr"))
    assert len(results) == len(frames)
    assert [r.request_id for r in results] == [str(i) for i in range(len(frames))]
    assert not [r for r in results if isinstance(r, StreamError)]
    with_one_face = sum(len(r.detections) == 1 for r in results)
    print(f"\nInferStream carphone: one face in {with_one_face}/{len(frames)} frames")
    assert with_one_face >= 0.95 * len(frames)


def test_stream_bad_frame_answers_an_error_and_goes_on(client, media):
    good = (media / "astronaut.png").read_bytes()
    items = list(client.stream("faces", [good, b"not an image", good, good[:200], good]))
    assert len(items) == 5
    assert isinstance(items[1], StreamError) and items[1].code == "INVALID_ARGUMENT"
    assert isinstance(items[3], StreamError) and items[3].code == "INVALID_ARGUMENT"
    assert items[1].sequence == 1 and items[3].sequence == 3
    for i in (0, 2, 4):
        assert len(items[i].detections) == 1


def test_models_describe_themselves(client, classifier_onnx):
    faces = client.get_model("faces")
    assert faces.state == "ready" and faces.backend == "onnxruntime" and faces.precision == "fp32"
    assert faces.task == "centerface" and faces.device == "cpu"
    assert faces.inputs[0].shape == [-1, 3, -1, -1] and faces.inputs[0].dtype == "float32"
    assert len(faces.outputs) == 4
    # TensorRT is not installed here: the fallback chain says so.
    assert faces.attempts[0].backend == "tensorrt" and faces.attempts[0].outcome == "skipped"
    assert faces.attempts[-1].outcome == "selected"
    imagenet = client.get_model("imagenet")
    assert imagenet.labels_count == 1000 and imagenet.outputs[0].shape == [-1, 1000]


def test_health_per_model_and_overall(client):
    assert client.health("") == "SERVING"
    assert client.health("faces") == "SERVING"
    assert client.health("imagenet") == "SERVING"


def test_reflection_lists_the_services(daemon):
    import grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(daemon.address) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"edgeinfer.v1.Inference", "grpc.health.v1.Health"} <= names
