"""normalize_on = "gpu": the served model normalizes with the NVRTC kernel into ORT's device input
and answers as the CPU-normalized model does, one image or a stacked batch."""
from __future__ import annotations

import numpy as np
import pytest

from edgeinfer.config import parse_config
from edgeinfer.model.served import ServedModel
from edgeinfer.model.types import EncodedImage, ModelState
from edgeinfer.model.families.postprocess import Options

pytestmark = pytest.mark.gpu

PHOTOS = ("coffee.png", "astronaut.png", "chelsea.png")


def _imagenet(classifier_onnx, tmp_path, normalize_on):
    cfg = parse_config({"cache": {"dir": str(tmp_path)}, "models": [
        {"name": "imagenet", "onnx": str(classifier_onnx), "backends": ["onnxruntime"], "warmup_runs": 1,
         "input": {"color": "rgb", "resize": "center-crop", "size": [224, 224], "mean": [127.0] * 3,
                   "std": [128.0] * 3, "normalize_on": normalize_on},
         "postprocess": {"task": "classification", "top_k": 5},
         "onnxruntime": {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]},
         "batching": {"max_batch": 4}}]}, source="test_normalize_on_gpu")
    model = ServedModel(cfg.models[0], cfg.server, tmp_path)
    model.load()
    assert model.state is ModelState.READY, model.state_reason
    return model


def test_gpu_normalization_answers_as_the_cpu_path(ort_cuda, classifier_onnx, media, tmp_path):
    from edgeinfer.runtime.gpu.normalizing_runner import GpuNormalizingRunner

    gpu = _imagenet(classifier_onnx, tmp_path / "gpu", "gpu")
    cpu = _imagenet(classifier_onnx, tmp_path / "cpu", "cpu")
    try:
        assert isinstance(gpu.runner, GpuNormalizingRunner) and gpu.normalize_on_gpu
        assert gpu.runner.info.details["normalize_on"].startswith("gpu")
        assert "normalize on gpu" in gpu.state_reason
        spec = next(s for s in gpu.runner.inputs if s.name == gpu.image_input.name)
        assert spec.dtype == np.uint8 and tuple(spec.shape[1:]) == (224, 224, 3)
        images = [EncodedImage((media / p).read_bytes()) for p in PHOTOS]
        for image in images:
            a, b = gpu.predict(image, Options()), cpu.predict(image, Options())
            assert [c.index for c in a.result.classes] == [c.index for c in b.result.classes]
            assert np.allclose([c.score for c in a.result.classes], [c.score for c in b.result.classes],
                               atol=1e-4)
        # A stacked batch of uint8 images (what the batcher sends) equals one image at a time.
        prepared = [gpu.prepare(i) for i in images]
        name = gpu.image_input.name
        batch = np.concatenate([p.feeds[name] for p in prepared])
        assert batch.dtype == np.uint8 and batch.shape == (3, 224, 224, 3)
        together = gpu.runner.infer({name: batch})
        for k, p in enumerate(prepared):
            alone = gpu.runner.infer(p.feeds)
            for out, arr in alone.items():
                # cuDNN picks other algorithms (TF32 on Hopper) for batch 3 than for batch 1: the
                # logits move in the 4th decimal (seen on the H200), the ranking does not.
                assert together[out][k].argmax() == arr[0].argmax()
                assert np.max(np.abs(together[out][k] - arr[0])) <= 1e-2
    finally:
        gpu.unload()
        cpu.unload()
