"""Where the machine's CPU goes, process by process, while a benchmark runs (device calls).

Every INTERVAL seconds, one line per busy Python process: pid, thread count,
cores used over the interval, and how much of that went to its busiest
threads; then the machine's total. The shared inference host is the process
with hundreds of threads (ONNX Runtime's pools), the front-ends have tens,
load-generator clients a handful. Runs until killed:

    python3 scripts/device/proc_cpu.py --out $OUT/proc-cpu.txt & PC=$!
    ...
    kill $PC
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "daemon"))

from edgeinfer.bench.profile import thread_cpu_ticks  # noqa: E402 - needs the path above

TICKS = os.sysconf("SC_CLK_TCK")


def _stat(stat_path: Path) -> tuple[int, int]:
    """(utime + stime ticks, parent pid) from a /proc stat file."""
    text = stat_path.read_text()
    rest = text[text.rfind(")") + 2:].split()
    return int(rest[11]) + int(rest[12]), int(rest[1])


def _snapshot(parents: dict[int, int]) -> dict[int, tuple[int, dict[int, int]]]:
    """pid -> (process ticks, {tid: ticks}) for every Python process; records each one's parent."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if b"python" not in (entry / "cmdline").read_bytes():
                continue
            threads = thread_cpu_ticks(int(entry.name))
            ticks, parents[int(entry.name)] = _stat(entry / "stat")
            out[int(entry.name)] = (ticks, threads)
        except (OSError, IndexError, ValueError):
            continue
    return out


def _comm(pid: int, tid: int) -> str:
    """The thread's name (gRPC's C core and some libraries name theirs; Python threads are "python3")."""
    try:
        return Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip().replace(" ", "_")
    except OSError:
        return "?"


def _busy() -> int:
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(v) - v[3] - v[4]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interval", type=float, default=3.0)
    ap.add_argument("--min-cores", type=float, default=0.05, help="leave out processes below this")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    me = os.getpid()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    parents: dict[int, int] = {}
    first: dict[int, int] = {}  # pid -> ticks when first seen
    last: dict[int, tuple[int, int]] = {}  # pid -> (ticks, threads) when last seen
    with args.out.open("w") as f:
        try:
            _loop(f, args, me, parents, first, last)
        finally:
            f.write("totals: pid ppid threads cpu_seconds (from first to last sight)\n")
            for pid in sorted(last, key=lambda p: -(last[p][0] - first[p])):
                seconds = (last[pid][0] - first[pid]) / TICKS
                if seconds >= 0.1:
                    f.write(f"  {pid} {parents.get(pid, 0)} {last[pid][1]} {seconds:.1f}\n")


def _loop(f, args, me, parents, first, last) -> None:
    before, busy0, t0 = _snapshot(parents), _busy(), time.monotonic()
    for pid, (ticks, threads) in before.items():
        first.setdefault(pid, ticks)
    while True:
        time.sleep(args.interval)
        after, busy1, t1 = _snapshot(parents), _busy(), time.monotonic()
        for pid, (ticks, threads) in after.items():
            first.setdefault(pid, ticks)
            last[pid] = (ticks, len(threads))
        span = (t1 - t0) * TICKS
        rows = []
        for pid, (ticks, threads) in after.items():
            if pid == me or pid not in before:
                continue
            old_ticks, old_threads = before[pid]
            cores = (ticks - old_ticks) / span
            if cores < args.min_cores:
                continue
            per_thread = sorted(((t - old_threads.get(tid, t)) / span, tid) for tid, t in threads.items())[::-1]
            rows.append((cores, pid, len(threads), [(c, _comm(pid, tid)) for c, tid in per_thread[:6]]))
        rows.sort(reverse=True)
        f.write(f"t={time.strftime('%H:%M:%S')} machine busy {(busy1 - busy0) / span:.2f} cores\n")
        for cores, pid, n, top in rows:
            f.write(f"  pid {pid:>7} threads {n:>4} cores {cores:5.2f}  busiest threads "
                    + " ".join(f"{c:.2f}:{name}" for c, name in top) + "\n")
        f.flush()
        before, busy0, t0 = after, busy1, t1


if __name__ == "__main__":
    main()
