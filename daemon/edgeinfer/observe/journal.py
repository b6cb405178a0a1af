"""Log lines for a terminal or for journald.

Under systemd, stderr is a stream to journald, and systemd says so with
JOURNAL_STREAM="dev:inode" of that stream. Lines then carry no timestamp of
their own (the journal stamps every line) and start with the level as a
syslog priority, "<N>" (sd-daemon(3)), which journald strips and stores:
`journalctl -p warning` works. Anywhere else the lines are unchanged.
"""
from __future__ import annotations

import logging
import os
import sys

# sd-daemon(3) priority prefixes by logging level.
SYSLOG_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


class JournalFormatter(logging.Formatter):
    """"<N>name: message" (with `tag`: "<N>[tag] name: message"); every line of a multi-line record
    (a traceback) carries the prefix, so each keeps its priority."""

    def __init__(self, tag: str = "") -> None:
        super().__init__(f"[{tag}] %(name)s: %(message)s" if tag else "%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        level = max((lvl for lvl in SYSLOG_PRIORITY if lvl <= record.levelno), default=logging.DEBUG)
        prefix = f"<{SYSLOG_PRIORITY[level]}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines() or [""])


def stderr_is_journal() -> bool:
    """Whether stderr is the stream systemd connected to journald (JOURNAL_STREAM names its dev:inode;
    a process whose stderr was redirected elsewhere inherits the variable but not the stream)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(v) for v in value.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def stderr_handler(tag: str = "") -> logging.Handler:
    """A stderr handler with the journal's line format under journald, else "time level [tag] name: message"."""
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        handler.setFormatter(JournalFormatter(tag))
    else:
        where = f"[{tag}] " if tag else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)-7s {where}%(name)s: %(message)s"))
    return handler
