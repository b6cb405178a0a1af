"""Classification: logits or probabilities [1, C] -> top-k classes."""
from __future__ import annotations

import numpy as np

from ..labels import label_of
from .base import ClassScore, Options, Postprocessor, Result


def softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


class Classifier(Postprocessor):
    default_score_threshold = 0.0

    def decode(self, outputs, transform, options: Options) -> Result:
        logits = np.asarray(next(iter(outputs.values()))).reshape(-1)
        scores = softmax(logits) if self.cfg.softmax else logits.astype(np.float64)
        k = min(options.top_k or self.cfg.top_k, scores.size)
        top = np.argsort(-scores, kind="stable")[:k]
        threshold = self.score_threshold(options)
        return Result(classes=[ClassScore(int(i), label_of(self.labels, int(i)), float(scores[i]))
                               for i in top if scores[i] >= threshold])
