"""The one place where a process of edgeinfer routes POSIX signals to its lifecycle.

Every process kind (the daemon, the supervisor, the shared inference host)
names what each signal means to it; this module installs that, on the asyncio
loop when there is one (the handler then runs on the loop, where the daemon's
state lives) or with signal.signal otherwise. A handler of None ignores the
signal (a child of the supervisor ignores Ctrl-C's SIGINT: the supervisor
orders the stop). Outside the main thread (tests run daemons on threads)
nothing is installed and the caller's methods still work when called directly.
"""
from __future__ import annotations

import asyncio
import logging
import signal
from typing import Callable, Mapping, Optional

log = logging.getLogger(__name__)

STOP = (signal.SIGTERM, signal.SIGINT)
# Reload the config (systemctl reload: ExecReload= or Type=notify-reload's ReloadSignal=).
RELOAD = signal.SIGHUP


def route(handlers: Mapping[int, Optional[Callable[[], None]]],
          loop: Optional[asyncio.AbstractEventLoop] = None) -> bool:
    """Install `handlers` (signal number -> callable or None to ignore); False where it cannot
    (not the main thread)."""
    try:
        for sig, handler in handlers.items():
            if handler is None:
                signal.signal(sig, signal.SIG_IGN)
            elif loop is not None:
                loop.add_signal_handler(sig, handler)
            else:
                signal.signal(sig, lambda _sig, _frame, h=handler: h())
    except (ValueError, RuntimeError, NotImplementedError):  # not the main thread
        return False
    return True
