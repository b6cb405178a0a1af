"""All-rows postprocessing (what a batching slot runs) equals postprocessing each row alone."""
from __future__ import annotations

import numpy as np
import pytest

from edgeinfer.config import InputConfig, PostprocessConfig
from edgeinfer.model.families.labels import load_labels
from edgeinfer.model.families.postprocess import Options, postprocessor_for
from edgeinfer.model.families.postprocess.base import Postprocessor, Result
from edgeinfer.model.families.preprocess import IDENTITY, Preprocessor

PHOTOS = ("coffee.png", "chelsea.png", "astronaut.png", "rocket.jpg", "camera.png")


@pytest.fixture(scope="module")
def logits(classifier_onnx, media):
    """EfficientNet-Lite0 logits for five real photos, one batched run."""
    import onnxruntime as ort

    pre = Preprocessor(InputConfig(resize="center-crop", mean=[127.0] * 3, std=[128.0] * 3))
    batch = np.stack([pre(pre.decode((media / p).read_bytes()))[0] for p in PHOTOS])
    sess = ort.InferenceSession(str(classifier_onnx), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {sess.get_inputs()[0].name: batch})
    return {sess.get_outputs()[0].name: out}


@pytest.mark.parametrize("softmax", [True, False])
def test_classifier_rows_equal_one_row_at_a_time(logits, classifier_onnx, softmax):
    labels = load_labels(str(classifier_onnx.parent / "imagenet-labels.txt"))
    post = postprocessor_for(PostprocessConfig(task="classification", top_k=5, softmax=softmax), labels)
    options = [Options(), Options(top_k=1), Options(top_k=3, score_threshold=0.05 if softmax else 5.0),
               Options(include_raw_outputs=True), Options(top_k=10)]
    together = post.rows(logits, [IDENTITY] * 5, options)
    for i, (got, opts) in enumerate(zip(together, options)):
        alone = post({k: v[i:i + 1] for k, v in logits.items()}, IDENTITY, opts)
        assert [(c.index, c.label) for c in got.classes] == [(c.index, c.label) for c in alone.classes]
        np.testing.assert_allclose([c.score for c in got.classes], [c.score for c in alone.classes], rtol=1e-12)
        assert got.outputs.keys() == alone.outputs.keys()
        for k in got.outputs:
            np.testing.assert_array_equal(got.outputs[k], alone.outputs[k])
    assert [len(r.classes) for r in together][:2] == [5, 1] and len(together[4].classes) == 10
    assert together[0].classes[0].label == "espresso"


def test_rows_fall_back_per_item_so_one_failure_stays_its_own(logits, classifier_onnx, media):
    """ServedModel.finish_batch: a family's all-rows path failing -> item by item, errors kept per item."""
    from edgeinfer.config import ModelConfig, ServerConfig
    from edgeinfer.model.served import ServedModel
    from edgeinfer.model.types import Prepared

    model = ServedModel(ModelConfig(name="m", onnx=str(classifier_onnx),
                                    postprocess=PostprocessConfig(task="classification")), ServerConfig())

    class Picky(Postprocessor):
        def decode(self, outputs, transform, options) -> Result:
            if options.top_k == 13:
                raise ValueError("row refuses")
            return Result(outputs=dict(outputs))

    model.postprocessor = Picky(model.cfg.postprocess, [])
    items = [(Prepared({}, IDENTITY, (1, 1), 0), Options(top_k=k)) for k in (1, 13, 2)]
    out = {"y": np.arange(6.0).reshape(3, 2)}
    answers = model.finish_batch(out, items)
    assert isinstance(answers[1], ValueError)
    np.testing.assert_array_equal(answers[0].outputs["y"], [[0.0, 1.0]])
    np.testing.assert_array_equal(answers[2].outputs["y"], [[4.0, 5.0]])


@pytest.mark.parametrize("values", ["distinct", "few levels", "rounded"])
def test_top_k_orders_as_a_full_stable_sort(values):
    """top_k skips the full sort; it must still answer what argsort(-scores, stable)[:, :k] does,
    ties at the cut and inside the top k included (quantized and saturated scores tie)."""
    from edgeinfer.model.families.postprocess.classify import top_k

    rng = np.random.default_rng(7)
    for _ in range(400):
        rows, n = int(rng.integers(1, 10)), int(rng.integers(1, 50))
        k = int(rng.integers(1, n + 3))
        if values == "distinct":
            scores = rng.standard_normal((rows, n))
        elif values == "few levels":
            scores = rng.integers(0, 3, (rows, n)).astype(np.float64)
        else:
            scores = np.round(rng.standard_normal((rows, n)), 1)
        want = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(top_k(scores, k), want)
