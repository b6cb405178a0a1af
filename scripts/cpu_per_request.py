"""CPU milliseconds per request, by thread, for the daemon and its in-process ceiling.

Usage (repo root, nothing else running):
    .venv/bin/python scripts/cpu_per_request.py --config configs/dev.toml --model imagenet \
        --concurrency 8 --pairs 2

Each pair runs, back to back:
1. the daemon (`edgeinfer serve`) driven by `edgeinfer bench --address` (client processes).
   Its threads' CPU is read from /proc over the middle of the measured window, with py-spy
   naming the Python threads when it is installed;
2. the ceiling: the model loaded in this process and called from `concurrency` threads, as
   `edgeinfer bench` measures it (bench/ceiling.py's `_run_point`).

The rows are CPU seconds per second (cores) and per request (ms). Throughput on a saturated
box is cores / (ms per request). The daemon's extra cost over the ceiling shows where its
ratio goes: the event loop and gRPC threads, the clients, and less efficient compute.
Why it exists: docs/NOTES.md, "Throughput (issue 4)", session 8.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "daemon"), str(ROOT / "clients")]  # also from a checkout without the venv's install
from edgeinfer.bench.environment import tree_cpu_seconds  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int, names: dict[int, str]) -> collections.Counter:
    """CPU seconds so far of each thread of `pid`, summed by name (`names`: tid -> name;
    threads not in it count as "native", e.g. ONNX Runtime's pool and gRPC's threads)."""
    out: collections.Counter = collections.Counter()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = open(f"/proc/{pid}/task/{tid}/stat").read()
        except OSError:  # the thread ended meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[names.get(int(tid), "native")] += (int(fields[11]) + int(fields[12])) / TICKS
    return out


def py_spy_names(pid: int) -> dict[int, str]:
    """tid -> Python thread name ("infer_3" -> "infer"), from `py-spy dump`; {} without py-spy."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        return {}
    text = subprocess.run([exe, "dump", "--pid", str(pid)], capture_output=True, text=True).stdout
    return {int(m.group(1)): re.sub(r"_\d+$", "", m.group(2))
            for m in re.finditer(r'^Thread (\d+) \(\w+\): "(.*)"$', text, re.M)}


def rows(before: collections.Counter, after: collections.Counter, seconds: float, rate: float,
         extra: Optional[dict[str, float]] = None) -> list[tuple]:
    """(name, cores, ms per request) per thread name, busiest first, then each of `extra`
    (name -> cores measured elsewhere, e.g. the clients), then ("total", ...) over all of them."""
    out, total = [], 0.0
    for name in sorted(after, key=lambda k: -(after[k] - before.get(k, 0.0))):
        cores = (after[name] - before.get(name, 0.0)) / seconds
        total += cores
        if cores > 0.005:
            out.append((name, cores, 1000 * cores / rate))
    for name, cores in (extra or {}).items():
        total += cores
        out.append((name, cores, 1000 * cores / rate))
    out.append(("total", total, 1000 * total / rate))
    return out


def _print(title: str, rate: float, table: list[tuple]) -> None:
    print(f"{title}: {rate:.1f} req/s")
    for name, cores, ms in table:
        print(f"  {name:<16} {cores:6.3f} cores {ms:7.2f} ms/req")


def measure_daemon(args) -> None:
    edgeinfer = str(Path(sys.executable).with_name("edgeinfer"))
    server = subprocess.Popen([edgeinfer, "serve", "--config", args.config],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(args.startup)
        bench = subprocess.Popen(
            [edgeinfer, "bench", "--address", args.address, "--models", args.model,
             "--concurrency", str(args.concurrency), "--duration", str(args.duration + 4), "--warmup", "1",
             "--no-ceiling", "--no-echo", "--no-trivial", "--loop", "uvloop", "--no-plots",
             "--out", "/tmp/cpu-per-request", "--name", "daemon"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(3)  # past the warm-up; the worker threads exist by now
        names = py_spy_names(server.pid)
        # The bench process and its client processes (the bench itself only waits meanwhile).
        t0, c0 = thread_cpu(server.pid, names), tree_cpu_seconds(bench.pid)
        time.sleep(args.duration)
        t1, c1 = thread_cpu(server.pid, names), tree_cpu_seconds(bench.pid)
        err = bench.communicate()[1]
        found = re.findall(rf"c={args.concurrency}: ([\d.]+)/s", err)
        if not found:
            raise SystemExit(f"the bench printed no rate:\n{err[-2000:]}")
        rate = float(found[-1])
        _print("daemon", rate, rows(t0, t1, args.duration, rate, extra={"clients": (c1 - c0) / args.duration}))
    finally:
        server.terminate()
        server.wait(30)


def measure_ceiling(args) -> None:
    from edgeinfer.bench.ceiling import _run_point
    from edgeinfer.bench.workload import find_images, image_payload
    from edgeinfer.config import load_config
    from edgeinfer.pipeline.model import ServedModel
    from edgeinfer.server.converters import request_input, request_options
    from edgeinfer_client._proto.edgeinfer.v1 import inference_pb2 as pb

    cfg = load_config(args.config)
    model = ServedModel(next(m for m in cfg.models if m.name == args.model), cfg.server, None)
    model.load()
    payload = image_payload(args.model, find_images(ROOT / "assets" / "media"))
    msgs = [pb.InferRequest.FromString(r) for r in payload.requests]
    items, options = [request_input(m) for m in msgs], request_options(msgs[0])
    result = {}
    run = threading.Thread(target=lambda: result.update(point=_run_point(
        model, items, options, args.concurrency, 1, args.duration + 4, 1.0, None)))
    run.start()
    time.sleep(3)
    names = {t.native_id: ("ceiling" if t.name.startswith("Thread-") else t.name)
             for t in threading.enumerate() if t.native_id}
    t0 = thread_cpu(os.getpid(), names)
    time.sleep(args.duration)
    t1 = thread_cpu(os.getpid(), names)
    run.join()
    model.unload()
    rate = result["point"].summary.throughput
    _print("ceiling", rate, rows(t0, t1, args.duration, rate))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/dev.toml")
    p.add_argument("--model", default="imagenet")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--duration", type=float, default=8.0, help="seconds of CPU sampled per side")
    p.add_argument("--pairs", type=int, default=1)
    p.add_argument("--address", default="127.0.0.1:50051", help="the config's [server] listen")
    p.add_argument("--startup", type=float, default=12.0, help="seconds to let the daemon load")
    args = p.parse_args()
    for i in range(args.pairs):
        print(f"# pair {i + 1}")
        measure_daemon(args)
        measure_ceiling(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
