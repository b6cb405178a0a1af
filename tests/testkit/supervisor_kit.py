"""A Supervisor ([server] processes > 1) started in the test process, for tests of several processes."""
from __future__ import annotations

import threading


class Running:
    """A Supervisor started here, run() on a thread (signals stay with pytest)."""

    def __init__(self, config, config_path=None):
        from edgeinfer.process.supervisor import Supervisor

        self.loaded = threading.Event()
        self.sup = Supervisor(config, tick_s=0.2, on_loaded=lambda _s: self.loaded.set(),
                              config_path=None if config_path is None else str(config_path))
        self.listen = self.sup.start(timeout=120)
        self.rc = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.loaded.wait(120), "the processes did not finish loading"

    def _run(self):
        self.rc = self.sup.run()

    def stop(self):
        self.sup.request_stop()
        self.thread.join(30)
