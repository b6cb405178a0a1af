"""KServe v2 / Triton gRPC, proven with the unmodified tritonclient from PyPI against a real daemon.

tritonclient runs in a process of its own (tritonclient_scenarios.py says why); its
observations come back as JSON and arrays, and each test below checks one part. Answers to
tensors are compared with the edgeinfer.v1 API's for the same input on the same daemon.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeinfer_client import Client

HERE = Path(__file__).resolve().parent
STREAM_REQUESTS = 40  # as in tritonclient_scenarios.py (not imported: it imports tritonclient)


def _tritonclient_missing() -> str:
    """Why tritonclient cannot run here ("" when it can): it is absent, or its generated code
    needs a newer protobuf than this environment's (on the grpcio 1.62 / protobuf 4.25 floor)."""
    res = subprocess.run([sys.executable, "-c", "import tritonclient.grpc, tritonclient.grpc.aio"],
                         capture_output=True, text=True, timeout=60)
    if res.returncode == 0:
        return ""
    last = (res.stderr.strip().splitlines() or ["?"])[-1]
    import google.protobuf

    return (f"tritonclient.grpc does not import with protobuf {google.protobuf.__version__} here ({last}); "
            f"its generated code needs a newer protobuf, so these tests run in `make test`, "
            f"not on the protobuf 4.25 floor")


@pytest.fixture(scope="module")
def kserve_daemon(start_daemon, dev_config, trivial_onnx, tmp_path_factory):
    why = _tritonclient_missing()  # before starting a daemon for nothing
    if why:
        if os.environ.get("CI") and "protobuf 4." not in why:
            pytest.fail(f"CI must have tritonclient: {why}")
        pytest.skip(why)
    import copy

    from edgeinfer_bench.trivial import trivial_model_config

    cfg = copy.deepcopy(dev_config)
    cfg.cache.dir = str(tmp_path_factory.mktemp("kserve-cache"))
    cfg.models.append(trivial_model_config(trivial_onnx))
    return start_daemon(cfg)


@pytest.fixture(scope="module")
def observed(kserve_daemon, media, tmp_path_factory):
    """What tritonclient saw, and the edgeinfer.v1 answers for the same tensors."""
    from edgeinfer.model.types import EncodedImage

    out = tmp_path_factory.mktemp("tritonclient")
    rng = np.random.default_rng(0)
    trivial_x = rng.standard_normal((1, 64)).astype(np.float32)
    imagenet = kserve_daemon.daemon.registry.get("imagenet")
    (name, imagenet_x), = imagenet.prepare(EncodedImage((media / "coffee.png").read_bytes())).feeds.items()
    np.savez(out / "inputs.npz", trivial_x=trivial_x, imagenet_x=imagenet_x, imagenet_input_name=np.array(name))
    with Client(kserve_daemon.address, timeout=60) as c:
        v1 = {"trivial_y": c.infer("trivial", tensors={"x": trivial_x}).outputs["y"],
              "imagenet": c.infer("imagenet", tensors={name: imagenet_x}, include_raw_outputs=True).outputs}
    res = subprocess.run([sys.executable, str(HERE / "tritonclient_scenarios.py"), kserve_daemon.address,
                          str(media), str(out / "inputs.npz"), str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    seen = json.loads((out / "observed.json").read_text())
    assert "crash" not in seen, seen["crash"]
    arrays = dict(np.load(out / "outputs.npz"))
    return seen, arrays, v1


def test_health_and_readiness(observed):
    seen, _, _ = observed
    assert seen["live"] is True and seen["ready"] is True
    assert seen["model_ready"] == {"faces": True, "imagenet": True, "trivial": True, "nope": False}
    assert seen["server_metadata"]["name"] == "edgeinfer"
    assert "model_repository" in seen["server_metadata"]["extensions"]


def test_model_metadata_and_config(observed):
    seen, _, _ = observed
    md = seen["model_metadata"]
    assert md["name"] == "imagenet" and md["platform"] == "onnxruntime_onnx"
    assert md["inputs"][0]["datatype"] == "FP32" and md["inputs"][0]["shape"] == ["-1", "3", "224", "224"]
    cfg = seen["config_imagenet"]
    assert cfg["name"] == "imagenet" and cfg["max_batch_size"] >= 1
    assert cfg["input"][0]["dims"] == ["3", "224", "224"] and cfg["input"][0]["data_type"] == "TYPE_FP32"
    assert cfg["input"][0]["format"] == "FORMAT_NCHW"
    assert seen["config_trivial"]["input"][0]["dims"] == ["64"]
    assert seen["config_trivial"]["output"][0]["name"] == "y"


def test_tensor_answers_equal_the_edgeinfer_v1_api(observed):
    seen, arrays, v1 = observed
    np.testing.assert_array_equal(arrays["trivial_y"], v1["trivial_y"])
    np.testing.assert_array_equal(arrays["trivial_y_typed"], v1["trivial_y"])  # typed contents, same answer
    assert seen["trivial_response_id"] == "t-1"
    (name, logits), = v1["imagenet"].items()
    assert seen["imagenet_tensor_outputs"] == [name]
    np.testing.assert_allclose(arrays["imagenet_logits"], logits, rtol=1e-5, atol=1e-5)


def test_encoded_images_as_bytes_inputs(observed):
    seen, _, _ = observed
    coffee = seen["coffee"]
    assert coffee["outputs"] == ["classes", "labels", "scores"]
    assert coffee["labels"][0] == "espresso" and coffee["classes"][0] == 967
    assert len(coffee["labels"]) == 5  # the configured top_k
    assert coffee["scores"] == sorted(coffee["scores"], reverse=True) and coffee["scores"][0] > 0.5
    two = seen["two_images"]
    assert two["outputs"] == ["labels"]  # only the requested output
    assert [len(row) for row in two["labels"]] == [3, 3]  # the top_k parameter
    assert two["labels"][0][0] == "espresso" and "cat" in two["labels"][1][0]
    faces = seen["astronaut"]
    assert faces["counts"] == [1] and faces["labels"][0] == ["face"]
    assert {"boxes", "scores", "labels", "counts"} <= set(faces["outputs"])
    x1, y1, x2, y2 = faces["boxes"][0][0]
    assert 150 < x1 < x2 < 300 and 30 < y1 < y2 < 220


def test_errors_carry_the_statuses_triton_clients_expect(observed):
    errors = observed[0]["errors"]
    assert errors["unknown_model"]["status"] == "StatusCode.NOT_FOUND"
    assert "Request for unknown model: 'nope'" in errors["unknown_model"]["message"]
    assert errors["metadata_unknown"]["status"] == "StatusCode.NOT_FOUND"
    assert errors["wrong_shape"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "'x'" in errors["wrong_shape"]["message"]
    assert errors["bad_image"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert errors["unknown_output"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "'zzz'" in errors["unknown_output"]["message"]


def test_stream_answers_every_request_and_reports_the_bad_one(observed):
    stream = observed[0]["stream"]
    expected = {str(i): i + 1.0 for i in range(STREAM_REQUESTS) if i != 7}
    assert stream["answers"] == expected
    assert len(stream["errors"]) == 1 and "'x'" in stream["errors"][0]["message"]


def test_statistics(observed):
    s = observed[0]["stats_trivial"]
    assert s["name"] == "trivial"
    # infer, typed infer, the stream's 39 good requests (the failures are counted apart)
    assert int(s["inference_count"]) >= 2 + 39
    st = s["inference_stats"]
    assert int(st["success"]["count"]) >= 41 and int(st["success"]["ns"]) > 0
    assert int(st["fail"]["count"]) >= 2  # the wrong shape, the unknown output, the bad stream request
    assert int(st["compute_infer"]["count"]) == int(st["success"]["count"])


def test_unload_then_load(observed):
    seen = observed[0]
    index = {m["name"]: m for m in seen["repository_index"]["models"]}
    assert {k: v["state"] for k, v in index.items()} == {"faces": "READY", "imagenet": "READY", "trivial": "READY"}
    after = seen["after_unload"]
    assert after["ready"] is False
    states = {m["name"]: (m["state"], m.get("reason", "")) for m in after["index"]["models"]}
    assert states["trivial"] == ("UNAVAILABLE", "unloaded")
    assert after["infer"]["status"] == "StatusCode.UNAVAILABLE"
    assert seen["after_load"]["ready"] is True
    assert len(seen["after_load"]["y"][0]) == 64


def test_the_same_through_tritonclient_aio(observed):
    seen, arrays, _ = observed
    a = seen["aio"]
    assert a["live"] and a["ready"] and a["model_ready"] and a["metadata_name"] == "imagenet"
    assert a["max_batch_size"] >= 1
    np.testing.assert_array_equal(np.array(a["y"], np.float32), arrays["trivial_y"])
    assert a["coffee_top"] == "espresso"
    assert a["stream"] == {f"a{i}": i + 1.0 for i in range(40)}
    assert a["stats_count"] >= 40
    assert a["ready_after_unload"] is False and a["ready_after_load"] is True
