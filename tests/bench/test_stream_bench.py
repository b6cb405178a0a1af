"""The stream benchmark runs and prints its table (its numbers are not judged here)."""
from __future__ import annotations

import argparse

import pytest


def _args(media, centerface_onnx, **kw):
    base = dict(streams="2", decode="cpu", device="cpu", size="320x240", fps=2.0, seconds=3.0, warmup=3.0, workers=2,
                max_batch=1, in_flight="1", processes="1", precision="fp32", input="640x480", video=str(media / "carphone_pristine.mp4"), onnx=str(centerface_onnx))
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.slow
def test_stream_benchmark_prints_per_stream_numbers_and_the_bound(centerface_onnx, media):
    from edgeinfer_bench.streams import run

    out = run(_args(media, centerface_onnx))
    assert "| s00 |" in out and "| s01 |" in out and "| all |" in out
    assert "latency P50 ms" in out and "CPU:" in out and "\nbound: " in out
    row = next(line for line in out.splitlines() if line.startswith("| all |"))
    fps_in = float(row.split("|")[2])
    assert fps_in > 20  # two 30 fps sources were read


@pytest.mark.slow
def test_a_sweep_runs_each_decode_and_count_on_its_own_daemon_and_sums_them_up(centerface_onnx, media):
    from edgeinfer_bench.streams import run

    # The video as it is (176x144 H.264); decode = "gpu" falls back to the CPU here and says so.
    out = run(_args(media, centerface_onnx, streams="1,2", decode="cpu,gpu", size="as-is", seconds=2.0,
                    warmup=2.0))
    assert out.count("edgeinfer stream benchmark: ") == 4
    assert "streams of a 176x144 looped video (carphone_pristine.mp4), decode gpu" in out
    summary = out[out.index("summary (cpu model"):].splitlines()
    rows = [line for line in summary if line.startswith("| cpu |") or line.startswith("| gpu |")]
    assert [r.split("|")[1:5] for r in rows] == [[" cpu ", " 1 ", " 1 ", " 1 "], [" cpu ", " 1 ", " 1 ", " 2 "],
                                                 [" gpu ", " 1 ", " 1 ", " 1 "], [" gpu ", " 1 ", " 1 ", " 2 "]]
    for r in rows:
        assert float(r.split("|")[6]) > 0  # results per second


@pytest.mark.slow
def test_streams_spread_over_processes_are_measured_through_the_api(centerface_onnx, media):
    from edgeinfer_bench.streams import run

    out = run(_args(media, centerface_onnx, streams="2", processes="2", size="as-is", seconds=3.0, warmup=4.0))
    assert "2 daemon processes (pids " in out and "cpu: 2 processes" in out
    row = next(line for line in out.splitlines() if line.startswith("| all |"))
    assert float(row.split("|")[2]) > 20 and float(row.split("|")[3]) > 0  # frames in, results
