"""What every child process of the supervisor does first, front-end or inference host."""
from __future__ import annotations

import logging
import os


def prepare_child(tag: str, log_level: int) -> None:
    """First step in any child of the supervisor: systemd talks to the supervisor only (it accepts
    the main PID), and log lines say which process wrote them."""
    os.environ.pop("NOTIFY_SOCKET", None)
    os.environ.pop("WATCHDOG_USEC", None)
    from edgeinfer.observe.journal import stderr_handler

    logging.basicConfig(level=log_level, handlers=[stderr_handler(tag)])
