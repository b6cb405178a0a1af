"""scripts/cpu_per_request.py's helpers: per-thread CPU from /proc, and the per-request table."""
from __future__ import annotations

import collections
import os
import threading
import time

import pytest


@pytest.fixture(scope="module")
def cpr(load_script):
    return load_script("scripts/cpu_per_request.py")


def test_thread_cpu_charges_a_busy_thread_to_its_name(cpr):
    stop = threading.Event()
    started = threading.Event()

    def spin():
        started.set()
        x = 0
        while not stop.is_set():
            x += 1

    t = threading.Thread(target=spin, name="spinner")
    t.start()
    started.wait()
    try:
        names = {t.native_id: "spinner"}
        before = cpr.thread_cpu(os.getpid(), names)
        time.sleep(0.5)
        after = cpr.thread_cpu(os.getpid(), names)
    finally:
        stop.set()
        t.join()
    busy = after["spinner"] - before.get("spinner", 0.0)
    assert busy >= 0.1  # it spun (it shares the GIL with this sleeping thread only)
    assert "native" in after  # every unnamed thread, this one included, lands there
    assert after["native"] - before.get("native", 0.0) < busy


def test_rows_are_cores_and_ms_per_request_busiest_first(cpr):
    before = collections.Counter({"infer": 10.0, "MainThread": 1.0, "idle": 5.0})
    after = collections.Counter({"infer": 26.0, "MainThread": 1.6, "idle": 5.0, "native": 2.0})
    table = cpr.rows(before, after, seconds=8.0, rate=100.0)
    assert [r[0] for r in table] == ["infer", "native", "MainThread", "total"]  # idle (0 cores) left out
    infer = table[0]
    assert infer[1] == pytest.approx(2.0) and infer[2] == pytest.approx(20.0)  # 16 s / 8 s; 2 cores / 100 req/s
    assert table[-1][1] == pytest.approx(2.0 + 0.25 + 0.075)
    assert table[-1][2] == pytest.approx(23.25)
    # Cores measured elsewhere (the clients) come after the threads and count in the total.
    with_clients = cpr.rows(before, after, seconds=8.0, rate=100.0, extra={"clients": 0.05})
    assert [r[0] for r in with_clients] == ["infer", "native", "MainThread", "clients", "total"]
    assert with_clients[-1][1] == pytest.approx(2.0 + 0.25 + 0.075 + 0.05)
