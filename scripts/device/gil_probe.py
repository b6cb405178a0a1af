"""Who holds the GIL in the shared mode's processes while a benchmark point runs.

Run beside `gpu_bench.py --daemon-metrics` (see run_variants.sh, GIL_PROBE=1).
For every load it sees start on the inference host's metrics endpoint, it
waits into the measured window, then samples the host and one front-end with
py-spy for a few seconds, twice at once per process:

- `--gil`: only the thread holding the GIL is sampled, so samples / (rate x
  seconds) is the share of wall time the GIL was held: near 1.0 means that
  process's Python is the bottleneck, whatever its thread count;
- all threads (`--threads`): what each thread is doing, GIL or not.

Output: one summary file per load (GIL share, hottest frames under the GIL)
and py-spy's raw collapsed stacks beside it.

`--native`: the all-threads sampling also unwinds native frames (gRPC's C core,
OpenCV, libc, CUDA), thread by thread. py-spy must pause the process for each
such sample, so the point runs slower while it samples: use it to see where CPU
goes, not for throughput.

    python3 scripts/device/gil_probe.py --out $OUT/gil --host-port 9404 --frontend-port 9400
"""
from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def listening_pid(port: int):
    """The pid of the process listening on TCP `port` (from /proc), or None."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "0A":  # 0A: LISTEN
                inodes.add(f"socket:[{f[9]}]")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return int(pid)
        except OSError:
            continue
    return None


def requests_total(port: int) -> float:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode()
    except OSError:
        return -1.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("edgeinfer_requests_total{"))


def summarize(raw: Path, rate: int, seconds: float, top: int = 15) -> list[str]:
    """GIL share and the hottest leaf / inclusive frames of a py-spy collapsed-stack file."""
    leaf, incl, total = collections.Counter(), collections.Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        n = int(n)
        frames = stack.split(";")[1:]  # the first is the thread
        total += n
        if frames:
            leaf[frames[-1]] += n
        for fr in set(frames):
            incl[fr] += n
    out = [f"samples {total}, share of wall time {total / (rate * seconds):.2f}"]
    out += ["  self:"] + [f"    {n / max(total, 1):6.1%}  {f}" for f, n in leaf.most_common(top)]
    out += ["  inclusive:"] + [f"    {n / max(total, 1):6.1%}  {f}" for f, n in incl.most_common(top)]
    return out


def by_thread(raw: Path, rate: int, seconds: float, threads: int = 12, top: int = 6) -> list[str]:
    """Each busy thread's share of wall time and its hottest leaf frames (native ones included)."""
    per: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        thread, _, rest = stack.partition(";")
        per[thread][rest.rsplit(";", 1)[-1] if rest else "(no frame)"] += int(n)
    out = ["  by thread (share of wall time, hottest leaf frames):"]
    for thread, leaves in sorted(per.items(), key=lambda kv: -sum(kv[1].values()))[:threads]:
        total = sum(leaves.values())
        out.append(f"    {total / (rate * seconds):5.2f}  {thread}")
        out += [f"           {n / total:6.1%}  {f}" for f, n in leaves.most_common(top)]
    return out


def probe(out: Path, k: int, roles: dict, rate: int, seconds: float, native: bool = False) -> None:
    procs = []
    for role, pid in roles.items():
        kinds = (("gil", ["--nonblocking", "--gil"]), ("all", ["--native"] if native else ["--nonblocking"]))
        for kind, flags in kinds:
            f = out / f"load{k}-{role}-{kind}.txt"
            procs.append((role, kind, f, subprocess.Popen(
                ["py-spy", "record", "--pid", str(pid), "--threads", "-r", str(rate),
                 "-d", str(int(seconds)), "-f", "raw", "-o", str(f)] + flags,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
    lines = [f"load {k}: " + ", ".join(f"{r} pid {p}" for r, p in roles.items())]
    for role, kind, f, p in procs:
        _, err = p.communicate()
        if p.returncode != 0 or not f.exists():
            lines.append(f"{role} {kind}: py-spy failed: {err.decode(errors='replace')[-300:]}")
            continue
        lines.append(f"{role} {kind}:")
        lines += ["  " + x for x in summarize(f, rate, seconds)]
        if kind == "all":
            lines += by_thread(f, rate, seconds)
    (out / f"load{k}-summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--host-port", type=int, default=9404)
    ap.add_argument("--frontend-port", type=int, default=9400)
    ap.add_argument("--delay", type=float, default=5.0, help="seconds after a load starts (past the warm-up)")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--native", action="store_true", help="unwind native frames in the all-threads sampling")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    k, idle_since = 0, None
    last = -1.0
    while True:
        now_total = requests_total(args.host_port)
        if now_total > last >= 0 and idle_since is not None:  # a load started
            time.sleep(args.delay)
            roles = {"host": listening_pid(args.host_port), "frontend": listening_pid(args.frontend_port)}
            roles = {r: p for r, p in roles.items() if p}
            k += 1
            probe(args.out, k, roles, args.rate, args.seconds, args.native)
            idle_since, last = None, requests_total(args.host_port)
            continue
        if now_total == last or now_total < 0:
            idle_since = idle_since or time.monotonic()
        last = now_total
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
