"""The stream benchmark runs and prints its table (its numbers are not judged here)."""
from __future__ import annotations

import argparse

import pytest


@pytest.mark.slow
def test_stream_benchmark_prints_per_stream_numbers_and_the_bound(centerface_onnx, media):
    from edgeinfer_bench.streams import run

    out = run(argparse.Namespace(streams=2, size="320x240", fps=2.0, seconds=3.0, warmup=3.0, workers=2,
                                 max_batch=1, video=str(media / "carphone_pristine.mp4"), onnx=str(centerface_onnx)))
    assert "| s00 |" in out and "| s01 |" in out and "| all |" in out
    assert "latency P50 ms" in out and "CPU:" in out and "\nbound: " in out
    row = next(line for line in out.splitlines() if line.startswith("| all |"))
    fps_in = float(row.split("|")[2])
    assert fps_in > 20  # two 30 fps sources were read
