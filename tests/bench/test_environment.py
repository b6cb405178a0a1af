"""Machine description and the CPU-share monitor that flags contended measurements."""
from __future__ import annotations

import os
import sys
import time

import pytest

from edgeinfer_bench import environment

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


def test_stolen_time_is_read_apart_from_busy_time(tmp_path):
    """/proc/stat's aggregate line: busy = user + nice + system + irq + softirq; steal on its own
    (guest time is already inside user); a kernel without the steal column reads 0."""
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 5 40 9000 30 2 3 250 17 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
    assert environment._cpu_jiffies(stat) == (150, 250)
    stat.write_text("cpu  100 5 40 9000 30 2 3\n")
    assert environment._cpu_jiffies(stat) == (150, 0)
    assert environment._cpu_jiffies(tmp_path / "missing") is None
    busy, stolen = environment._cpu_jiffies()  # this machine's own
    assert busy > 0 and stolen >= 0


def test_cpu_share_reports_stolen_time_apart_from_other_processes(monkeypatch):
    """Steal (here 0.5 s of all cores over a 1 s window on a 4-core count) is a share of its own,
    and not part of "others"."""
    ticks = os.sysconf("SC_CLK_TCK")
    readings = iter([(1000, 200), (1000, 200 + ticks // 2)])
    monkeypatch.setattr(environment, "_cpu_jiffies", lambda: next(readings))
    monkeypatch.setattr(environment, "_tree_jiffies", lambda _pid: 0)
    monkeypatch.setattr(environment, "usable_cpus", lambda: 4)
    clock = iter([10.0, 11.0])
    monkeypatch.setattr(environment.time, "monotonic", lambda: next(clock))
    with environment.CpuShare() as share:
        pass
    assert share.steal_pct == pytest.approx(12.5, abs=0.1) and share.other_pct == 0.0


def test_the_report_warns_when_a_hypervisor_stole_cpu():
    from edgeinfer_bench import report

    points = [{"target": "ceiling", "run": "r#3", "steal_pct": 9.6}, {"target": "daemon", "run": "r#3", "steal_pct": 0.4},
              {"target": "daemon", "run": "r#4", "steal_pct": None}]
    text = "\n".join(report._steal_warning(points))
    assert "stolen by the hypervisor" in text and "1 of 2 points" in text and "9.6%" in text and "ceiling" in text
    assert report._steal_warning([dict(p, steal_pct=0.4) for p in points[:2]]) == []
    row = report._points_table([{"target": "daemon", "mode": "unary", "concurrency": 1, "throughput": 10.0,
                                 "p50_ms": 1.0, "p95_ms": 1.0, "p99_ms": 1.0, "mean_ms": 1.0, "errors": 0,
                                 "steal_pct": 3.25}])[-1]
    assert row.rstrip(" |").endswith("3.2")


def test_git_state_and_versions():
    git = environment.git_state()
    assert len(git["head"]) == 40 and git["state"] in ("clean", "dirty")
    versions = environment.package_versions()
    assert versions["grpcio"] and versions["numpy"]


def test_profile_summary_of_known_samples():
    from edgeinfer_bench.profile import summarize_raw, thread_busy

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
    assert set(usage) == {"server_cores", "client_cores", "others_pct", "steal_pct"}
    assert 0.0 <= usage["steal_pct"] <= 100.0
    # Two spinning processes on however many cores: each gets a real share, neither more than a core.
    assert 0.2 <= usage["server_cores"] <= 1.1
    assert 0.2 <= usage["client_cores"] <= 1.1
