"""A served EfficientNet-Lite0 (ImageNet) built from a config, as the daemon would load it."""
from __future__ import annotations

import pytest

from edgeinfer.config import parse_config
from edgeinfer.model.served import ServedModel


@pytest.fixture
def imagenet_model(classifier_onnx):
    """imagenet_model(cache_dir, server={...}, load=True, **input_keys) -> a ServedModel on ONNX Runtime (CPU).

    input_keys override the [models.input] table (center-crop 224, mean 127, std 128);
    load=False returns it before loading."""

    def make(cache_dir, server=None, load=True, **input_keys) -> ServedModel:
        inputs = {"color": "rgb", "resize": "center-crop", "size": [224, 224], "mean": [127.0] * 3,
                  "std": [128.0] * 3, **input_keys}
        cfg = parse_config({"server": server or {}, "cache": {"dir": str(cache_dir)}, "models": [
            {"name": "imagenet", "onnx": str(classifier_onnx), "backends": ["onnxruntime"], "warmup_runs": 1,
             "input": inputs, "postprocess": {"task": "classification", "top_k": 5}}]},
            source="tests/pipeline imagenet_model")
        model = ServedModel(cfg.models[0], cfg.server, cache_dir)
        if load:
            model.load()
        return model

    return make
