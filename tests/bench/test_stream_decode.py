"""The stream-decode benchmark runs the daemon's own capture and preprocessing and prints their rate."""
from __future__ import annotations

import re

from edgeinfer_bench import stream_decode


def test_it_counts_frames_of_every_stream_and_says_why_a_decode_cannot_run(media, capsys):
    assert stream_decode.main(["--video", str(media / "carphone_pristine.mp4"), "--streams", "2",
                               "--decode", "cpu,gpu", "--seconds", "0.6", "--warmup", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "carphone_pristine.mp4 (176x144" in out
    row = re.search(r"^\| cpu \| 2 \| (\d+) \| ([\d.]+) \|", out, re.M)
    assert row and int(row.group(1)) > 0 and float(row.group(2)) > 0, out
    # Without PyNvVideoCodec or a GPU the gpu rows say why; with them they carry numbers.
    gpu = re.search(r"^\| gpu \| 2 \| (.*)$", out, re.M).group(1)
    assert gpu.startswith("failed: ") or re.match(r"\d+ \|", gpu), gpu


def test_the_report_counts_streams_carried_at_the_target_rate():
    rows = [{"decode": "gpu", "streams": 64, "total_fps": 1925.0, "min_fps": 29.0, "median_fps": 30.1,
             "cores": 3.2, "errors": []}]
    table = stream_decode.report(rows, 30.0, "v.mp4")
    assert "| gpu | 64 | 1925 | 29.0 | 30.1 | 64 | no | 3.2 |" in table
