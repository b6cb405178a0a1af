"""Report math on known inputs: percentiles, summaries, ratios, targets."""
from __future__ import annotations

import numpy as np
import pytest

from edgeinfer_bench import analysis
from edgeinfer_bench.stats import HIST_EDGES_MS, percentile, ratio, summarize


def test_percentile_interpolates_between_order_statistics():
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    # 95th of 1..100: rank 0.95 * 99 = 94.05 -> 95 + 0.05 * (96 - 95)
    assert percentile(range(1, 101), 95) == pytest.approx(95.05)


def test_percentile_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        percentile([], 50)


def test_summarize_counts_throughput_and_milliseconds():
    lat_s = [0.001] * 90 + [0.010] * 10  # 90 fast, 10 slow
    s = summarize(lat_s, duration_s=2.0, errors=3)
    assert s.count == 100 and s.errors == 3
    assert s.throughput == pytest.approx(50.0)  # errors do not count as throughput
    assert s.p50_ms == pytest.approx(1.0)
    assert s.p95_ms == pytest.approx(10.0)
    assert s.mean_ms == pytest.approx(1.9)
    assert s.min_ms == pytest.approx(1.0) and s.max_ms == pytest.approx(10.0)
    assert sum(s.hist_counts) == 100 and len(s.hist_counts) == len(HIST_EDGES_MS) - 1
    # the two groups land in two different bins
    assert sorted(c for c in s.hist_counts if c) == [10, 90]


def test_summarize_empty_window_has_no_percentiles():
    s = summarize([], 1.0, errors=5)
    assert s.count == 0 and s.throughput == 0 and s.p50_ms is None and s.hist_counts == []
    with pytest.raises(ValueError, match="positive"):
        summarize([0.1], 0)


def test_ratio_guards_missing_and_zero():
    assert ratio(90, 100) == pytest.approx(0.9)
    assert ratio(None, 1) is None and ratio(1, None) is None and ratio(1, 0) is None


def _pt(target, model, mode, c, tput, p50, batch=1):
    return dict(run="r", target=target, model=model, mode=mode, concurrency=c, batch=batch,
                throughput=tput, p50_ms=p50)


def _run():
    return {"label": "r", "models": {"imagenet": {}, "trivial": {}}, "points": [
        _pt("daemon", "imagenet", "unary", 8, 46.0, 170.0),
        _pt("ceiling", "imagenet", "in-process", 8, 40.0, 190.0, batch=1),
        _pt("ceiling", "imagenet", "in-process", 8, 50.0, 150.0, batch=8),  # best ceiling counts
        _pt("daemon", "trivial", "unary", 1, 800.0, 1.2),
        _pt("daemon", "trivial", "unary", 8, 900.0, 8.0),
        _pt("daemon", "trivial", "stream", 1, 2000.0, 7.0),
    ]}


def test_ratios_pair_points_of_the_same_model_mode_and_concurrency():
    echo = [_pt("echo", "trivial", "unary", 1, 1000.0, 1.0), _pt("echo", "trivial", "unary", 8, 1000.0, 7.0)]
    ratios = analysis.compute_ratios(_run(), echo)
    by = {(r["model"], r["name"], r["concurrency"]): r for r in ratios}
    assert by[("imagenet", "daemon/ceiling", 8)]["value"] == pytest.approx(46 / 50)
    assert by[("trivial", "daemon/echo", 1)]["value"] == pytest.approx(0.8)
    assert by[("trivial", "daemon/echo", 1)]["latency_p50_ratio"] == pytest.approx(1.2)
    assert by[("trivial", "daemon/echo", 8)]["value"] == pytest.approx(0.9)
    assert by[("trivial", "stream/unary", 1)]["value"] == pytest.approx(2.5)
    assert ("trivial", "stream/unary", 8) not in by  # no stream point at 8: no ratio invented


def test_stream_points_meet_the_ceiling_with_as_many_images_in_flight():
    run = {"label": "r", "models": {"resnet50": {}}, "points": [
        _pt("ceiling", "resnet50", "in-process", 32, 3600.0, 8.9, batch=8),
        dict(_pt("daemon", "resnet50", "stream", 32, 3240.0, 9.8), in_flight=32),   # 32 streams x 1 frame
        dict(_pt("daemon", "resnet50", "stream", 2, 3000.0, 9.0), in_flight=32),    # 2 streams x 16 frames
        dict(_pt("daemon", "resnet50", "stream", 8, 2000.0, 9.0), in_flight=128),   # no ceiling at 128
    ]}
    ratios = [r for r in analysis.compute_ratios(run, []) if r["name"] == "daemon/ceiling"]
    by = {r["concurrency"]: r["value"] for r in ratios}
    assert by == {32: pytest.approx(0.9), 2: pytest.approx(3000 / 3600)}
    assert all(r["mode"] == "stream" for r in ratios)


def test_targets_pass_miss_and_not_measured():
    run = _run()
    echo = [_pt("echo", "trivial", "unary", 1, 1000.0, 1.0), _pt("echo", "trivial", "unary", 8, 1000.0, 7.0)]
    results = analysis.evaluate(analysis.cpu_targets(run), analysis.compute_ratios(run, echo), "r")
    verdict = {t.title: t.passed for t in results}
    assert verdict["imagenet: daemon >= 90% of in-process ceiling (unary, c=8)"] is True   # 0.92
    assert verdict["trivial: unary within 15% of bare echo (c=1)"] is False                  # 0.80
    assert verdict["trivial: unary within 15% of bare echo (c=8)"] is True                   # 0.90
    assert verdict["trivial: InferStream >= 3x unary (c=1)"] is False                       # 2.5
    missing = analysis.evaluate(analysis.cpu_targets(run), [], "r")
    assert all(t.passed is None and t.value is None for t in missing)


def test_split_spreads_concurrency_over_processes():
    from edgeinfer_bench.loadgen import split

    assert split(8, 3) == [3, 3, 2]
    assert sum(split(32, 5)) == 32
    assert np.all(np.diff(split(7, 7)) == 0)
