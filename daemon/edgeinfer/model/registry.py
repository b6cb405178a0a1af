"""The set of served models: loads each on its own thread, answers lookups.

Models load in parallel and independently: a model that builds a TensorRT
engine for minutes does not hold back one that is ready in a second, and a
model that fails does not stop the others. The daemon is live the whole time;
each model is ready only once it can answer.
"""
from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

from edgeinfer.config import Config
from edgeinfer.errors import InvalidInput, ModelNotFound
from edgeinfer.model.served import ServedModel
from edgeinfer.model.types import ModelState

log = logging.getLogger(__name__)


class ModelRegistry:
    def __init__(self, config: Config,
                 on_state_change: Callable[[ServedModel], None] = lambda _m: None, remote=None):
        """remote: a serving.shared.remote.RemoteModels when the models run in the shared
        inference process (a front-end of `[server] inference = "shared"`); None loads them here."""
        self.config = config
        self.remote = remote
        self._listeners = [on_state_change]
        self.models: dict[str, ServedModel] = {m.name: self._served(m, self._notify) for m in config.models}
        self._threads: list[threading.Thread] = []

    def add_listener(self, fn: Callable[[ServedModel], None]) -> None:
        self._listeners.append(fn)

    def _notify(self, model: ServedModel) -> None:
        for fn in self._listeners:
            try:
                fn(model)
            except Exception:  # noqa: BLE001 - a listener must not break loading
                log.exception("state listener failed for model %s", model.name)

    def _served(self, cfg, notify: Callable[[ServedModel], None]) -> ServedModel:
        return ServedModel(cfg, self.config.server, Path(self.config.cache.dir), notify, remote=self.remote,
                           arena_shrink_bytes=self.config.limits.arena_shrink_bytes)

    def start_loading(self) -> None:
        """Load every model on its own daemon thread; returns at once."""
        for model in self.models.values():
            self.load_in_thread(model)

    def wait_loaded(self, timeout: Optional[float] = None) -> bool:
        """Block until every model finished loading (ready or failed)."""
        for t in self._threads:
            t.join(timeout)
        return not any(t.is_alive() for t in self._threads)

    @property
    def loading_done(self) -> bool:
        return all(m.state is not ModelState.LOADING for m in self.models.values())

    def get(self, name: str) -> ServedModel:
        if not name:
            raise InvalidInput("request names no model (field 'model' is empty)")
        try:
            return self.models[name]
        except KeyError:
            raise ModelNotFound(f"no model named {name!r}; served models: {sorted(self.models)}") from None

    # -- reload (the daemon's event loop thread) ---------------------------------------
    # `models` is replaced, never changed in place: threads that iterate it (metrics, loaders)
    # keep the dict they started with.
    def new_model(self, cfg, announce: bool = False) -> ServedModel:
        """A ServedModel for `cfg`, not registered. announce=False: its state changes tell nobody
        (a model loading beside the one it will replace must not turn that name's health off)."""
        return self._served(cfg, self._notify if announce else (lambda _m: None))

    def add(self, model: ServedModel) -> None:
        """Register a new model (its state changes are announced from now on)."""
        model.on_state_change = self._notify
        self.models = {**self.models, model.name: model}

    def replace(self, model: ServedModel) -> ServedModel:
        """Put `model` in place of the registered model of its name, at once; returns the old one,
        marked retired (it still answers the requests it has)."""
        old = self.models[model.name]
        model.on_state_change = self._notify
        self.models = {**self.models, model.name: model}
        old.retired = True
        return old

    def remove(self, name: str) -> ServedModel:
        """Unregister a model (new requests get NOT_FOUND); returns it, retired, still loaded."""
        models = dict(self.models)
        old = models.pop(name)
        self.models = models
        old.retired = True
        return old

    def load_in_thread(self, model: ServedModel) -> concurrent.futures.Future:
        """Load `model` on a daemon thread of its own (a load can take minutes: not on a worker pool),
        which close() waits for; a Future of the load's end."""
        done: concurrent.futures.Future = concurrent.futures.Future()

        def body() -> None:
            try:
                done.set_result(model.load())
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                done.set_exception(exc)

        t = threading.Thread(target=body, name=f"load-{model.name}", daemon=True)
        t.start()
        self._threads.append(t)
        return done

    def __iter__(self) -> Iterable[ServedModel]:
        return iter(self.models.values())

    def close(self, timeout: float = 30.0) -> None:
        """Unload every model; a model still loading stops at its next step, and close waits up to
        `timeout` s for that: a loader thread still inside a runtime's native code when the
        interpreter exits would abort the process (ONNX Runtime's session constructor does)."""
        for model in self.models.values():
            model.unload()
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))
        if self.remote is not None:
            self.remote.close()
