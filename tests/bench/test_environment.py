"""Machine description and the CPU-share monitor that flags contended measurements."""
from __future__ import annotations

import os
import sys
import time

import pytest

from edgeinfer.bench import environment

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _spin(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_our_own_cpu_time_is_counted_as_ours():
    ticks = os.sysconf("SC_CLK_TCK")
    before = environment._tree_jiffies(os.getpid())
    _spin(0.3)
    spent = (environment._tree_jiffies(os.getpid()) - before) / ticks
    assert 0.25 <= spent <= 1.0


def test_cpu_share_is_a_percentage():
    with environment.CpuShare() as share:
        _spin(0.2)
    assert share.other_pct is not None and 0.0 <= share.other_pct <= 100.0


def test_git_state_and_versions():
    git = environment.git_state()
    assert len(git["head"]) == 40 and git["state"] in ("clean", "dirty")
    versions = environment.package_versions()
    assert versions["grpcio"] and versions["numpy"]


def test_profile_summary_of_known_samples():
    from edgeinfer.bench.profile import summarize_raw, thread_busy

    raw = "\n".join([
        "thread (101): MainThread;run (a.py:1);Handle._run (b.py:2) 60",
        "thread (101): MainThread;run (a.py:1);EpollSelector.select (s.py:3) 100",  # waiting: dropped
        "thread (202): infer_0;_WorkItem.run (t.py:4);Session.run (o.py:5) 30",
        "thread (203): infer_1;_WorkItem.run (t.py:4);Session.run (o.py:5) 10",
    ])
    summary = summarize_raw(raw, rate_hz=100, seconds=2)
    assert summary["names"] == {101: "MainThread", 202: "infer", 203: "infer"}
    assert summary["self"] == [("Handle._run", 0.3), ("Session.run", 0.2)]
    assert ("_WorkItem.run", 0.2) in summary["inclusive"]
    ticks = os.sysconf("SC_CLK_TCK")
    busy = thread_busy({101: 0, 202: 0, 203: 0, 999: 0}, {101: ticks, 202: ticks // 2, 203: ticks // 2,
                                                          999: ticks // 4, 1000: ticks},
                       seconds=1.0, names=summary["names"])
    assert dict(busy) == {"MainThread": 1.0, "infer": 1.0, "native threads (no Python frame)": 0.25}


def test_window_cpu_splits_server_and_clients():
    import subprocess

    # A child that spins is "server"; this process spinning counts as "clients" (our tree).
    server = subprocess.Popen([sys.executable, "-c", "import time\nend=time.time()+3\nwhile time.time()<end: pass"])
    try:
        meter = environment.WindowCpu(server.pid)
        meter.start(delay=0.2, seconds=1.0)
        _spin(1.0)
        usage = meter.wait()
    finally:
        server.kill()
        server.wait()
    assert set(usage) == {"server_cores", "client_cores", "others_pct"}
    # Two spinning processes on however many cores: each gets a real share, neither more than a core.
    assert 0.2 <= usage["server_cores"] <= 1.1
    assert 0.2 <= usage["client_cores"] <= 1.1
