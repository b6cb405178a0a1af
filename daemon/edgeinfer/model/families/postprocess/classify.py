"""Classification: logits or probabilities [1, C] -> top-k classes."""
from __future__ import annotations

import numpy as np

from edgeinfer.model.families.labels import label_of
from edgeinfer.model.families.postprocess.base import ClassScore, Options, Postprocessor, Result


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64 (a 1-D vector or one row per item)."""
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores of each row, highest first, ties by lower index.

    The same order as a stable argsort of -scores cut to k columns, without sorting every
    class: a full sort of 9 x 1000 scores took ~450 us (this box), on the critical path of
    every request in the batch. Partition finds each row's k-th highest score in linear
    time; the rows with exactly k scores at or above it (no tie at the cut) sort only those k.
    Rows with a tie at the cut take the full stable sort, so the answer never depends on which
    of the tied classes the partition kept.
    """
    rows, n = scores.shape
    if k >= n or rows == 0:
        return np.argsort(-scores, axis=1, kind="stable")[:, :k]
    kth = np.partition(scores, n - k, axis=1)[:, n - k:n - k + 1]
    above = scores >= kth
    exact = above.sum(axis=1) == k
    out = np.empty((rows, k), dtype=np.intp)
    if exact.any():
        # nonzero walks row-major, so each exact row's k candidates come in index order, and a
        # stable sort of their negated scores keeps that order among equal scores.
        cand = np.nonzero(above[exact])[1].reshape(-1, k)
        vals = np.take_along_axis(scores[exact], cand, axis=1)
        out[exact] = np.take_along_axis(cand, np.argsort(-vals, axis=1, kind="stable"), axis=1)
    if not exact.all():
        out[~exact] = np.argsort(-scores[~exact], axis=1, kind="stable")[:, :k]
    return out


class Classifier(Postprocessor):
    default_score_threshold = 0.0

    def decode(self, outputs, transform, options: Options) -> Result:
        return self.decode_rows({k: v.reshape(1, -1) for k, v in outputs.items()}, [transform], [options])[0]

    def decode_rows(self, outputs, transforms, options) -> list[Result]:
        # One softmax and one sort for the whole batch: per-row numpy calls on a
        # batching slot cost ~1 ms each under GIL contention (H200, 32 rows).
        logits = np.asarray(next(iter(outputs.values())))
        logits = logits.reshape(logits.shape[0], -1)
        scores = softmax(logits) if self.cfg.softmax else logits.astype(np.float64)
        ks = [min(o.top_k or self.cfg.top_k, scores.shape[1]) for o in options]
        top = top_k(scores, max(ks))
        results = []
        for row, (k, o) in enumerate(zip(ks, options)):
            threshold = self.score_threshold(o)
            s = scores[row]
            results.append(Result(classes=[ClassScore(int(i), label_of(self.labels, int(i)), float(s[i]))
                                           for i in top[row, :k] if s[i] >= threshold]))
        return results
