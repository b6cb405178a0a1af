"""YOLOv8-style decoding against hand-computed boxes, on test graphs whose outputs we control,
served by a real daemon; plus a raw-tensor model through the same path."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeinfer.config import parse_config
from edgeinfer.model.families.postprocess.nms import iou_matrix, nms
from edgeinfer.model.families.postprocess.yolov8 import decode_yolov8
from edgeinfer_client import Client

# [cx, cy, w, h, score_class0, score_class1] per anchor, in 64x64 model-input pixels.
ANCHORS = np.array([
    [32, 32, 20, 10, 0.90, 0.00],   # a0: class 0
    [33, 32, 20, 10, 0.80, 0.00],   # a1: same object, lower score -> suppressed by NMS
    [32, 32, 20, 10, 0.00, 0.85],   # a2: same place, other class -> kept (class-aware NMS)
    [50, 50, 10, 10, 0.10, 0.05],   # a3: below threshold
    [10, 30, 8, 8, 0.00, 0.60],     # a4: another class-1 object
], np.float32)
PRED = ANCHORS.T[None].copy()  # [1, 4 + 2, 5]

# Sent image 128 wide x 64 high, letterboxed into 64x64: scale 0.5, pad 16 rows on top.
# a0 in model pixels: x 22..42, y 27..37 -> original: x 44..84, y (27-16)/0.5=22 .. (37-16)/0.5=42
EXPECTED = [
    ("person", 0.90, (44.0, 22.0, 84.0, 42.0)),
    ("car", 0.85, (44.0, 22.0, 84.0, 42.0)),
    ("car", 0.60, (12.0, 20.0, 28.0, 36.0)),  # a4: x 6..14, y 26..34
]


def constant_output_model(path, value: np.ndarray, input_shape=(1, 3, 64, 64)) -> None:
    """images -> value + 0 * sum(images): a real graph whose output we fully control."""
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, list(input_shape))
    out = helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(value.shape))
    nodes = [
        helper.make_node("ReduceSum", ["images"], ["s"], keepdims=0),
        helper.make_node("Mul", ["s", "zero"], ["z"]),
        helper.make_node("Add", ["pred", "z"], ["output0"]),
    ]
    graph = helper.make_graph(nodes, "yolo_test", [images], [out],
                              initializer=[numpy_helper.from_array(value, "pred"),
                                           numpy_helper.from_array(np.array(0, np.float32), "zero")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=9), str(path))


def doubling_model(path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "double", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=9), str(path))


def test_decode_hand_computed_in_model_pixels():
    boxes, scores, classes = decode_yolov8(PRED[0], threshold=0.25)
    assert classes.tolist() == [0, 0, 1, 1]
    np.testing.assert_allclose(boxes[0], [22, 27, 42, 37])
    np.testing.assert_allclose(boxes[3], [6, 26, 14, 34])
    keep = nms(boxes, scores, 0.45, classes=classes)
    assert keep.tolist() == [0, 2, 3]  # a1 suppressed by a0, a2 survives as another class
    assert nms(boxes, scores, 0.45).tolist() == [0, 3]  # class-agnostic: a2 goes too


def test_iou_matrix_known_values():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(iou_matrix(a, b)[0], [1.0, 50 / 150, 0.0])


@pytest.fixture(scope="module")
def served(tmp_path_factory, start_daemon):
    d = tmp_path_factory.mktemp("yolo")
    constant_output_model(d / "yolo.onnx", PRED)
    doubling_model(d / "double.onnx")
    (d / "labels.txt").write_text("person\ncar\n")
    cfg = parse_config({
        "cache": {"dir": str(d / "cache")},
        "models": [
            {"name": "yolo", "onnx": "yolo.onnx", "backends": ["onnxruntime"],
             "input": {"resize": "letterbox", "size": [64, 64], "scale": 1 / 255},
             "postprocess": {"task": "yolov8", "labels": "labels.txt", "score_threshold": 0.25,
                             "nms_iou_threshold": 0.45}},
            {"name": "double", "onnx": "double.onnx", "backends": ["onnxruntime"],
             "postprocess": {"task": "raw"}},
        ]}, source="test", base_dir=d)
    daemon = start_daemon(cfg)
    yield daemon
    daemon.stop()


def test_served_yolo_maps_boxes_back_to_the_sent_image(served):
    image = np.full((64, 128, 3), 90, np.uint8)  # 128 wide, 64 high
    with Client(served.address, timeout=30) as c:
        result = c.infer("yolo", image)
    got = [(d.label, round(d.score, 2), tuple(round(v, 3) for v in d.box)) for d in result.detections]
    assert got == EXPECTED


def test_served_yolo_honours_request_thresholds(served):
    image = np.full((64, 128, 3), 90, np.uint8)
    with Client(served.address, timeout=30) as c:
        assert len(c.infer("yolo", image, score_threshold=0.7).detections) == 2
        # NMS off (IoU threshold 1): a1 is no longer suppressed
        assert len(c.infer("yolo", image, nms_iou_threshold=1.0).detections) == 4


def test_raw_model_returns_tensors(served):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    with Client(served.address, timeout=30) as c:
        out = c.infer("double", tensors={"x": x})
        np.testing.assert_array_equal(out.outputs["y"], 2 * x)
        info = c.get_model("double")
    assert info.task == "raw" and info.inputs[0].shape == [-1, 4]
