"""Agreement figures between a reduced-precision model and FP32, per task. Pure numpy.

Each function takes per-sample reference/candidate results and returns
named figures in [0, 1] (or absolute differences), so the gate and the
reports speak the same names.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from edgeinfer.model.families.postprocess import Detection, Result
from edgeinfer.model.families.postprocess.nms import iou_matrix


def classification_figures(reference: Sequence[Result], candidate: Sequence[Result], k: int = 5) -> dict[str, float]:
    """Ranking agreement.

    top1_agreement: same best class (the gate metric).
    top5_overlap: mean |top-k(ref) & top-k(cand)| / k.
    top1_in_reference_top5: the candidate's best class is among the
        reference's k best; tells a flip between near-tied classes (in) from
        a wrong answer (out).
    """
    top1 = overlap = near = 0.0
    for ref, cand in zip(reference, candidate):
        ref_ids = [c.index for c in ref.classes[:k]]
        cand_ids = [c.index for c in cand.classes[:k]]
        if ref_ids and cand_ids and ref_ids[0] == cand_ids[0]:
            top1 += 1
        if ref_ids:
            overlap += len(set(ref_ids) & set(cand_ids)) / len(ref_ids)
        if cand_ids and cand_ids[0] in ref_ids:
            near += 1
    n = max(1, len(reference))
    return {"top1_agreement": top1 / n, f"top{k}_overlap": overlap / n, f"top1_in_reference_top{k}": near / n}


def match_detections(ref: Sequence[Detection], cand: Sequence[Detection]) -> list[float]:
    """Greedy one-to-one matching by descending IoU, same class only; IoUs of matched pairs.

    Greedy rather than Hungarian: for the few, well separated boxes of one
    image both give the same pairs, and greedy needs no scipy.
    """
    if not ref or not cand:
        return []
    iou = iou_matrix(np.array([d.box for d in ref]), np.array([d.box for d in cand])).astype(np.float64)
    same_class = np.array([[r.class_index == c.class_index for c in cand] for r in ref])
    iou = np.where(same_class, iou, 0.0)
    matched: list[float] = []
    used_r: set[int] = set()
    used_c: set[int] = set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        r, c = divmod(int(flat), iou.shape[1])
        if iou[r, c] <= 0:
            break
        if r in used_r or c in used_c:
            continue
        used_r.add(r)
        used_c.add(c)
        matched.append(float(iou[r, c]))
    return matched


def detection_figures(reference: Sequence[Result], candidate: Sequence[Result]) -> dict[str, float]:
    """Box agreement in original-image pixels.

    mean_iou: matched IoUs summed over all images, divided by the number of
        box slots (max of the two counts per image), so a missed or extra box
        counts as IoU 0. 1.0 when neither model finds anything anywhere.
    matched_iou: mean IoU of matched pairs only.
    count_agreement: fraction of images where both find the same number of boxes.
    """
    total_iou = 0.0
    slots = 0
    matched_all: list[float] = []
    same_count = 0
    ref_boxes = cand_boxes = 0
    for ref, cand in zip(reference, candidate):
        matched = match_detections(ref.detections, cand.detections)
        matched_all.extend(matched)
        total_iou += sum(matched)
        slots += max(len(ref.detections), len(cand.detections))
        same_count += len(ref.detections) == len(cand.detections)
        ref_boxes += len(ref.detections)
        cand_boxes += len(cand.detections)
    n = max(1, len(reference))
    return {
        "mean_iou": total_iou / slots if slots else 1.0,
        "matched_iou": float(np.mean(matched_all)) if matched_all else (1.0 if not slots else 0.0),
        "count_agreement": same_count / n,
        "reference_boxes": float(ref_boxes),
        "candidate_boxes": float(cand_boxes),
    }


def _flat(outputs: dict[str, np.ndarray]) -> np.ndarray:
    parts = [np.asarray(v, np.float64).reshape(-1) for v in outputs.values()
             if np.issubdtype(np.asarray(v).dtype, np.number)]
    return np.concatenate(parts) if parts else np.zeros(0)


def tensor_figures(reference: Sequence[dict[str, np.ndarray]],
                   candidate: Sequence[dict[str, np.ndarray]]) -> dict[str, float]:
    """Raw output agreement: cosine per sample (all outputs concatenated), max |diff|.

    cosine_min is the worst sample: drift on one input is what a user sees.
    """
    cosines = []
    max_abs = 0.0
    for ref, cand in zip(reference, candidate):
        a, b = _flat(ref), _flat(cand)
        if a.shape != b.shape or not np.all(np.isfinite(b)):
            # A shape change or an fp16 overflow (inf/NaN) is total disagreement.
            cosines.append(0.0)
            max_abs = float("inf")
            continue
        if a.size:
            max_abs = max(max_abs, float(np.max(np.abs(a - b))))
        norm = float(np.linalg.norm(a) * np.linalg.norm(b))
        if norm == 0.0:
            cosines.append(1.0 if not np.any(a) and not np.any(b) else 0.0)
        else:
            cosines.append(float(np.dot(a, b) / norm))
    return {
        "cosine_min": min(cosines) if cosines else 0.0,
        "cosine_mean": float(np.mean(cosines)) if cosines else 0.0,
        "max_abs_diff": max_abs,
    }
