"""Readiness and fallback as a client meets them: loading, failed, and the others keep serving.

The slow backend below is a test double standing in for a TensorRT engine
build (TensorRT cannot exist here); it checks only our own control flow.
"""
from __future__ import annotations

import sys
import threading
import types

import pytest

from edgeinfer import runtime as backends
from edgeinfer.config import parse_config
from edgeinfer.errors import BackendLoadError
from edgeinfer_client import Client, ClientError

RELEASE = threading.Event()


class _SlowBuild:
    """RunnerFromOnnx stand-in: blocks like a long engine build, then fails like an unsupported op."""

    def __init__(self, request):
        self.request = request

    def __call__(self):
        self.request.progress("building engine 42%")
        RELEASE.wait(30)
        raise BackendLoadError("engine build failed: unsupported operator (test double)")


@pytest.fixture(scope="module")
def served(tmp_path_factory, centerface_onnx, start_daemon):
    fake = types.ModuleType("edgeinfer_test_slow_backend")
    fake.RunnerFromOnnx = _SlowBuild
    sys.modules[fake.__name__] = fake
    backends.BACKENDS["slowbuild"] = fake.__name__
    import edgeinfer.config as config_mod

    config_mod.BACKEND_NAMES = config_mod.BACKEND_NAMES + ("slowbuild",)
    d = tmp_path_factory.mktemp("lifecycle")
    (d / "broken.onnx").write_bytes(b"this is not an onnx file")
    face = {"input": {"resize": "letterbox", "size": [640, 480], "pad_value": 0},
            "postprocess": {"task": "centerface"}}
    cfg = parse_config({"cache": {"dir": str(d / "cache")}, "models": [
        {"name": "faces", "onnx": str(centerface_onnx), "backends": ["onnxruntime"], **face},
        {"name": "broken", "onnx": "broken.onnx", "backends": ["tensorrt", "onnxruntime"], **face},
        {"name": "slow", "onnx": str(centerface_onnx), "backends": ["slowbuild", "onnxruntime"], **face},
    ]}, source="test", base_dir=d)
    daemon = start_daemon(cfg, wait_loaded=False)
    yield daemon
    RELEASE.set()
    backends.BACKENDS.pop("slowbuild", None)
    config_mod.BACKEND_NAMES = tuple(b for b in config_mod.BACKEND_NAMES if b != "slowbuild")


def test_live_while_a_model_builds_and_others_serve(served, media):
    with Client(served.address, timeout=30) as c:
        c.wait_ready("faces", timeout=30)
        assert len(c.infer("faces", media / "astronaut.png").detections) == 1
        slow = c.get_model("slow")
        assert slow.state == "loading" and "building engine 42%" in slow.state_reason
        with pytest.raises(ClientError) as info:
            c.infer("slow", media / "astronaut.png")
        assert info.value.code == "UNAVAILABLE" and "loading" in info.value.message
        assert c.health("slow") == "NOT_SERVING"
        assert c.health("") == "NOT_SERVING"  # not every model has finished loading


def test_broken_model_fails_with_its_reason(served, media):
    with Client(served.address, timeout=30) as c:
        broken = c.get_model("broken")
        for _ in range(50):
            if broken.state != "loading":
                break
            broken = c.get_model("broken")
        assert broken.state == "failed"
        assert "onnxruntime could not load broken.onnx" in broken.state_reason
        assert [(a.backend, a.outcome) for a in broken.attempts] == [("tensorrt", "skipped"), ("onnxruntime", "failed")]
        with pytest.raises(ClientError) as info:
            c.infer("broken", media / "astronaut.png")
        assert info.value.code == "UNAVAILABLE" and "failed" in info.value.message
        assert c.health("broken") == "NOT_SERVING"


def test_failed_build_falls_back_to_the_next_backend(served, media):
    RELEASE.set()
    with Client(served.address, timeout=30) as c:
        c.wait_ready("slow", timeout=30)
        slow = c.get_model("slow")
        assert slow.backend == "onnxruntime"
        assert slow.attempts[0].backend == "slowbuild" and slow.attempts[0].outcome == "failed"
        assert "unsupported operator" in slow.attempts[0].reason
        assert len(c.infer("slow", media / "astronaut.png").detections) == 1
        # every model has finished loading and some serve: the daemon as a whole is ready
        c.wait_ready("", timeout=10)
