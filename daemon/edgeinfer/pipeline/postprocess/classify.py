"""Classification: logits or probabilities [1, C] -> top-k classes."""
from __future__ import annotations

import numpy as np

from ..labels import label_of
from .base import ClassScore, Options, Postprocessor, Result


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64 (a 1-D vector or one row per item)."""
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


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
        top = np.argsort(-scores, axis=1, kind="stable")[:, :max(ks)]
        results = []
        for row, (k, o) in enumerate(zip(ks, options)):
            threshold = self.score_threshold(o)
            s = scores[row]
            results.append(Result(classes=[ClassScore(int(i), label_of(self.labels, int(i)), float(s[i]))
                                           for i in top[row, :k] if s[i] >= threshold]))
        return results
