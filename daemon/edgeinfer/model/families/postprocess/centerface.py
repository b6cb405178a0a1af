"""CenterFace: heatmap / scale / offset / landmarks maps -> face boxes with 5 landmarks.

Outputs, in the model's order: heatmap [1,1,H/4,W/4], scale [1,2,..] (log
height, log width), offset [1,2,..] (y, x) and landmarks [1,10,..] (y, x
pairs relative to the box). Boxes come out in model input pixels, then
Transform maps them back to the original image.
"""
from __future__ import annotations

import numpy as np

from edgeinfer.model.families.postprocess.base import Detection, Options, Postprocessor, Result
from edgeinfer.model.families.postprocess.nms import nms

STRIDE = 4


def decode_centerface(heatmap: np.ndarray, scale: np.ndarray, offset: np.ndarray,
                      landmarks: np.ndarray, threshold: float, input_hw: tuple[int, int]):
    """Decode one image's maps (no batch dim) -> boxes [N,4], scores [N], landmarks [N,5,2]."""
    heat = heatmap[0]
    rows, cols = np.nonzero(heat > threshold)
    if rows.size == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)
    h_in, w_in = input_hw
    s_h = np.exp(scale[0, rows, cols]) * STRIDE
    s_w = np.exp(scale[1, rows, cols]) * STRIDE
    o_y = offset[0, rows, cols]
    o_x = offset[1, rows, cols]
    scores = heat[rows, cols].astype(np.float32)
    x1 = np.clip((cols + o_x + 0.5) * STRIDE - s_w / 2, 0, w_in)
    y1 = np.clip((rows + o_y + 0.5) * STRIDE - s_h / 2, 0, h_in)
    x2 = np.minimum(x1 + s_w, w_in)
    y2 = np.minimum(y1 + s_h, h_in)
    boxes = np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)
    lm = landmarks[:, rows, cols].T.reshape(-1, 5, 2)  # (y, x) pairs
    points = np.empty_like(lm, dtype=np.float32)
    points[..., 0] = lm[..., 1] * s_w[:, None] + x1[:, None]
    points[..., 1] = lm[..., 0] * s_h[:, None] + y1[:, None]
    return boxes, scores, points


class CenterFaceDecoder(Postprocessor):
    def decode(self, outputs, transform, options: Options) -> Result:
        maps = [np.asarray(v)[0] for v in outputs.values()]
        if len(maps) != 4:
            raise ValueError(f"CenterFace needs 4 outputs (heatmap, scale, offset, landmarks), got {len(maps)}")
        heatmap, scale, offset, landmarks = maps
        input_hw = (heatmap.shape[-2] * STRIDE, heatmap.shape[-1] * STRIDE)
        boxes, scores, points = decode_centerface(heatmap, scale, offset, landmarks,
                                                  self.score_threshold(options), input_hw)
        keep = nms(boxes, scores, self.nms_threshold(options), max_detections=self.cfg.max_detections)
        boxes = transform.boxes_to_original(boxes[keep])
        points = transform.points_to_original(points[keep])
        label = self.labels[0] if self.labels else "face"
        return Result(detections=[
            Detection(box=tuple(float(v) for v in b), score=float(s), class_index=0, label=label, landmarks=p)
            for b, s, p in zip(boxes, scores[keep], points)])
