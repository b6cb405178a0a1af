"""[server] inference = "shared" on a GPU: the host runs ORT's CUDA EP with GPU normalization; a
front-end model, which only decodes and resizes, answers as a standalone CPU-normalized model."""
from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest

from edgeinfer.config import parse_config
from edgeinfer.model.served import ServedModel
from edgeinfer.model.types import EncodedImage, ModelState
from edgeinfer.model.families.postprocess import Options

pytestmark = pytest.mark.gpu

PHOTOS = ("coffee.png", "astronaut.png", "chelsea.png")


def _config(classifier_onnx, tmp_path, normalize_on, providers):
    return parse_config({"server": {"inference": "shared"}, "cache": {"dir": str(tmp_path)}, "models": [
        {"name": "imagenet", "onnx": str(classifier_onnx), "backends": ["onnxruntime"], "warmup_runs": 1,
         "input": {"color": "rgb", "resize": "center-crop", "size": [224, 224], "mean": [127.0] * 3,
                   "std": [128.0] * 3, "normalize_on": normalize_on},
         "postprocess": {"task": "classification", "top_k": 5},
         "onnxruntime": {"providers": providers},
         "batching": {"max_batch": 8}}]}, source="test_shared_inference_gpu")


def test_front_end_on_a_cuda_host_answers_as_a_local_cpu_model(ort_cuda, classifier_onnx, media, tmp_path):
    from edgeinfer.process.host import InferenceHost
    from edgeinfer.serving.shared.remote import RemoteModels

    cfg = _config(classifier_onnx, tmp_path / "host", "gpu", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    pairs = [mp.get_context("spawn").Pipe(duplex=True) for _ in range(2)]
    host = InferenceHost(cfg)
    host.start([h for h, _ in pairs])
    remote = RemoteModels([f for _, f in pairs])
    front = ServedModel(cfg.models[0], cfg.server, tmp_path, remote=remote)
    local_cfg = _config(classifier_onnx, tmp_path / "local", "cpu", ["CPUExecutionProvider"])
    local = ServedModel(local_cfg.models[0], local_cfg.server, tmp_path)
    try:
        front.load()
        local.load()
        assert front.state is ModelState.READY, front.state_reason
        assert front.normalize_on_gpu and front.runner.info.device.startswith("cuda")
        assert "normalize on gpu" in front.state_reason and "inference process shared" in front.state_reason
        images = [EncodedImage((media / p).read_bytes()) for p in PHOTOS]
        prepared = [front.prepare(i) for i in images]
        assert all(p.feeds[front.image_input.name].dtype == np.uint8 for p in prepared)  # only uint8 crosses
        for image in images:
            a, b = front.predict(image, Options()), local.predict(image, Options())
            assert [c.index for c in a.result.classes] == [c.index for c in b.result.classes]
            assert np.allclose([c.score for c in a.result.classes], [c.score for c in b.result.classes], atol=1e-3)
        # A stacked batch through the link equals one image at a time (ranking; TF32 moves logits).
        name = front.image_input.name
        together = front.runner.infer({name: np.concatenate([p.feeds[name] for p in prepared])})
        for k, p in enumerate(prepared):
            alone = front.runner.infer(p.feeds)
            for out, arr in alone.items():
                assert together[out][k].argmax() == arr[0].argmax()
    finally:
        front.unload()
        local.unload()
        remote.close()
        host.wait_links(10)
        host.close(10)


def test_the_inference_process_decodes_every_front_ends_jpegs_on_the_gpu(ort_cuda, classifier_onnx, media,
                                                                         tmp_path):
    pytest.importorskip("nvidia.nvimgcodec", reason="nvImageCodec is not installed")
    from edgeinfer.process.host import InferenceHost
    from edgeinfer.serving.shared.remote import RemoteModels

    cfg = _config(classifier_onnx, tmp_path / "host", "cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    cfg.models[0].input.decode = "gpu"
    pairs = [mp.get_context("spawn").Pipe(duplex=True) for _ in range(2)]
    host = InferenceHost(cfg)
    host.start([h for h, _ in pairs])
    remote = RemoteModels([f for _, f in pairs])
    fronts = [ServedModel(cfg.models[0], cfg.server, tmp_path, remote=remote) for _ in range(2)]
    local_cfg = _config(classifier_onnx, tmp_path / "local", "cpu", ["CPUExecutionProvider"])
    local = ServedModel(local_cfg.models[0], local_cfg.server, tmp_path)
    try:
        local.load()
        for front in fronts:
            front.load()
            assert front.state is ModelState.READY and front.decode_on_gpu, front.state_reason
        images = [EncodedImage((media / p).read_bytes()) for p in PHOTOS + ("rocket.jpg",)]
        for k, image in enumerate(images):
            a, b = fronts[k % 2].predict(image, Options()), local.predict(image, Options())
            assert a.result.classes[0].index == b.result.classes[0].index
            assert abs(a.result.classes[0].score - b.result.classes[0].score) < 0.05
    finally:
        for front in fronts:
            front.unload()
        local.unload()
        remote.close()
        host.wait_links(10)
        host.close(10)
