"""sd_notify(3) without libsystemd: READY, STATUS, WATCHDOG, STOPPING.

A no-op when not started by systemd (no NOTIFY_SOCKET), so the same code runs
in a terminal, in tests and under Type=notify.
"""
from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def ready_by_policy(policy: str, states) -> bool:
    """Whether [server] ready = `policy` holds for models in `states` ("ready", "loading", ...):
    "all-models" every one ready, "any-model" one ready (or no models), "listening" always (the
    port is bound). One rule for a daemon and for a supervisor judging all its processes."""
    states = list(states)
    if policy == "all-models":
        return all(s == "ready" for s in states)
    if policy == "any-model":
        return "ready" in states or not states
    return True


def notify(*assignments: str) -> bool:
    """Send "KEY=value" lines to systemd; returns whether a socket was there."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(assignments).encode())
        return True
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False


def watchdog_interval_s() -> float | None:
    """Half of WatchdogSec (systemd's advice), or None when no watchdog is set for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6
