"""scripts/device/gil_probe.py's two CPU-side helpers: finding a listener's pid, reading py-spy's output."""
from __future__ import annotations

import os
import socket

import pytest


@pytest.fixture(scope="module")
def probe(load_script):
    return load_script("scripts/device/gil_probe.py")


def test_listening_pid_finds_this_process_and_only_for_a_listener(probe):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert probe.listening_pid(port) is None  # bound, not listening
        s.listen()
        assert probe.listening_pid(port) == os.getpid()


def test_summarize_counts_samples_share_and_hottest_frames(probe, tmp_path):
    # py-spy's raw format: "thread;frame;frame count" per line (--threads puts the thread first).
    raw = tmp_path / "host-gil.txt"
    raw.write_text("thread (0x1);main (a.py:1);run (a.py:5) 30\n"
                   "thread (0x2);main (a.py:1);wait (b.py:9) 10\n"
                   "thread (0x1);main (a.py:1);run (a.py:5) 20\n")
    lines = probe.summarize(raw, rate=100, seconds=1.0)
    assert lines[0] == "samples 60, share of wall time 0.60"
    self_part = lines[lines.index("  self:") + 1:lines.index("  inclusive:")]
    assert self_part[0].split() == ["83.3%", "run", "(a.py:5)"]   # 50 of 60 samples
    inclusive = lines[lines.index("  inclusive:") + 1:]
    assert inclusive[0].split() == ["100.0%", "main", "(a.py:1)"]
