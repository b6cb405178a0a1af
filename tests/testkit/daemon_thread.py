"""A real daemon in the test process, on its own event loop thread."""
from __future__ import annotations

import asyncio
import threading


class DaemonThread:
    """A real edgeinfer Daemon on its own event loop thread, on a free loopback port."""

    def __init__(self, config, **daemon_kwargs):
        from edgeinfer.process.daemon import Daemon

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
            # The daemon publishes each model's state (and chooses its route) on its loop, from a
            # callback the loader scheduled before it ended: one pass of the loop runs it.
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self.loop).result(30)
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.daemon.port}"

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.daemon.request_stop)
        self.thread.join(30)
