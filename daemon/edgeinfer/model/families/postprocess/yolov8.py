"""YOLOv8-style detectors: [1, 4 + classes, anchors], boxes cx,cy,w,h in input pixels,
class scores already sigmoid-ed, no objectness. Class-aware NMS."""
from __future__ import annotations

import numpy as np

from edgeinfer.model.families.labels import label_of
from edgeinfer.model.families.postprocess.base import Detection, Options, Postprocessor, Result
from edgeinfer.model.families.postprocess.nms import nms


def decode_yolov8(pred: np.ndarray, threshold: float):
    """[4 + C, A] -> boxes [N,4] x1y1x2y2, scores [N], classes [N] above threshold."""
    if pred.ndim != 2 or pred.shape[0] < 5:
        raise ValueError(f"YOLOv8 output must be [4 + classes, anchors], got {list(pred.shape)}")
    cls_scores = pred[4:]
    classes = cls_scores.argmax(axis=0)
    scores = cls_scores[classes, np.arange(pred.shape[1])]
    mask = scores > threshold
    cx, cy, w, h = pred[:4, mask]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)
    return boxes, scores[mask].astype(np.float32), classes[mask]


class YoloV8Decoder(Postprocessor):
    def decode(self, outputs, transform, options: Options) -> Result:
        pred = np.asarray(next(iter(outputs.values())))[0]
        boxes, scores, classes = decode_yolov8(pred, self.score_threshold(options))
        keep = nms(boxes, scores, self.nms_threshold(options), classes=classes,
                   max_detections=self.cfg.max_detections)
        boxes = transform.boxes_to_original(boxes[keep])
        return Result(detections=[
            Detection(box=tuple(float(v) for v in b), score=float(s), class_index=int(c),
                      label=label_of(self.labels, int(c)))
            for b, s, c in zip(boxes, scores[keep], classes[keep])])
