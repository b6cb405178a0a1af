"""Stream benchmark: N looped video streams through one in-process daemon; prints numbers.

    python -m edgeinfer_bench.streams --streams 10 --size 640x480 --fps 5

Makes a looped video of the requested size from the face test video (OpenCV's
VideoWriter, MPEG-4 part 2), serves it as N `[[streams]]` of one model, watches
every stream, and after a warm-up measures for `--seconds`:

* per stream: fps in (frames captured) and out (results), frames dropped for being
  late, capture-to-result latency P50/P95 (measured in the daemon, per result);
* CPU: cores used by the whole process over the window, and the share of the
  capture (decode) threads, read from /proc/self/task;
* the bound: decode when the captures cannot keep the source's rate, inference when
  results fall short of the target fps while frames are dropped as late.

Not a timed test: numbers, for docs/performance.md.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VIDEO = ROOT / "assets" / "media" / "carphone_pristine.mp4"
DEFAULT_ONNX = ROOT / "assets" / "models" / "centerface.onnx"


def make_video(src: Path, dst: Path, size: tuple[int, int], fps: float = 30.0) -> Path:
    """`src` resized to `size` (width, height), written with OpenCV's VideoWriter (mp4v)."""
    import cv2

    cap = cv2.VideoCapture(str(src))
    writer = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    n = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        writer.write(cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR))
        n += 1
    writer.release()
    cap.release()
    if not n:
        raise SystemExit(f"{src}: no frames")
    return dst


def _thread_cpu() -> dict[int, tuple[str, float]]:
    """(name, CPU seconds user + system) of each thread of this process, by native id."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in os.listdir("/proc/self/task"):
        try:
            head, tail = Path(f"/proc/self/task/{task}/stat").read_text().rsplit(")", 1)
        except OSError:
            continue
        fields = tail.split()
        out[int(task)] = (head.split("(", 1)[1], (int(fields[11]) + int(fields[12])) / ticks)
    return out


def _decode_cpu(before: dict, after: dict, readers: set[int]) -> float:
    """CPU seconds of the capture threads and FFmpeg's decoder threads (named "av:<codec>:...")."""
    total = 0.0
    for tid, (name, cpu) in after.items():
        if tid in readers or name.startswith("av:"):
            total += cpu - before.get(tid, (name, 0.0))[1]
    return total


class _Daemon:
    def __init__(self, config):
        from edgeinfer.process.daemon import Daemon

        self.daemon = Daemon(config, tick_s=0.5)
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        asyncio.set_event_loop(self.loop)

        async def main():
            await self.daemon.start()
            self.started.set()
            await self.daemon.run()

        self.loop.run_until_complete(main())

    def start(self):
        self.thread.start()
        if not self.started.wait(60):
            raise SystemExit("the daemon did not start")
        self.daemon.registry.wait_loaded(300)
        return self

    def stop(self):
        self.loop.call_soon_threadsafe(self.daemon.request_stop)
        self.thread.join(30)


def run(args) -> str:
    from edgeinfer.config import parse_config
    from edgeinfer_client import Client

    width, height = (int(v) for v in args.size.lower().split("x"))
    work = Path(tempfile.mkdtemp(prefix="edgeinfer-bench-streams-"))
    video = make_video(Path(args.video), work / f"loop-{width}x{height}.mp4", (width, height))
    cfg = parse_config({
        "server": {"listen": "127.0.0.1:0", "workers": args.workers},
        "metrics": {"enabled": False},
        "cache": {"dir": str(work / "cache")},
        "models": [{"name": "faces", "onnx": str(Path(args.onnx).resolve()),
                    "input": {"color": "rgb", "resize": "letterbox", "size": [640, 480], "pad_value": 0},
                    "postprocess": {"task": "centerface"},
                    "batching": {"max_batch": args.max_batch}}],
        "streams": [{"name": f"s{i:02d}", "source": str(video), "model": "faces", "fps": args.fps}
                    for i in range(args.streams)],
    })
    d = _Daemon(cfg).start()
    address = f"127.0.0.1:{d.daemon.port}"
    latencies: dict[str, list[float]] = {s.name: [] for s in cfg.streams}
    measuring = threading.Event()
    stop = threading.Event()

    def watch(name):
        with Client(address) as c:
            try:
                for r in c.watch(name, timeout=args.warmup + args.seconds + 30):
                    if measuring.is_set():
                        latencies[name].append(r.latency_s)
                    if stop.is_set():
                        return
            except Exception:  # noqa: BLE001 - the daemon stopping ends the watch
                return

    watchers = [threading.Thread(target=watch, args=(s.name,), daemon=True) for s in cfg.streams]
    for t in watchers:
        t.start()
    time.sleep(args.warmup)
    streams = list(d.daemon.streams)
    before = {s.name: s.stats() for s in streams}
    cpu0, threads0, wall0 = time.process_time(), _thread_cpu(), time.monotonic()
    measuring.set()
    time.sleep(args.seconds)
    measuring.clear()
    wall = time.monotonic() - wall0
    cpu, threads1 = time.process_time() - cpu0, _thread_cpu()
    after = {s.name: s.stats() for s in streams}
    readers = set().union(*(s.capture.reader_tids for s in streams))
    decode_cpu = _decode_cpu(threads0, threads1, readers)
    stop.set()
    d.stop()

    ncpu = os.cpu_count() or 1
    lines = [f"edgeinfer stream benchmark: {args.streams} streams of a {width}x{height} looped video (30 fps, mp4v), "
             f"model faces (CenterFace, 640x480 letterbox, ONNX Runtime CPU), target fps {args.fps:g} per stream, "
             f"max_batch {args.max_batch}, {args.workers} workers",
             f"machine: {platform.node()} {platform.machine()}, {ncpu} CPUs, load average before "
             f"{os.getloadavg()[0]:.1f}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
             f"window {wall:.1f} s after {args.warmup:g} s warm-up",
             "",
             "| stream | fps in | fps out | dropped late /s | latency P50 ms | P95 ms |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    tot_in = tot_out = tot_drop = 0.0
    all_lat: list[float] = []
    for name in sorted(after):
        a, b = after[name], before[name]
        fin = (a.frames_in - b.frames_in) / wall
        fout = (a.frames_processed - b.frames_processed) / wall
        drop = (a.frames_dropped - b.frames_dropped) / wall
        lat = np.array(latencies[name]) * 1000
        all_lat += list(lat)
        p50, p95 = (np.percentile(lat, 50), np.percentile(lat, 95)) if lat.size else (float("nan"),) * 2
        tot_in, tot_out, tot_drop = tot_in + fin, tot_out + fout, tot_drop + drop
        lines.append(f"| {name} | {fin:.1f} | {fout:.2f} | {drop:.2f} | {p50:.0f} | {p95:.0f} |")
    lat = np.array(all_lat)
    lines.append(f"| all | {tot_in:.1f} | {tot_out:.2f} | {tot_drop:.2f} | "
                 f"{np.percentile(lat, 50) if lat.size else float('nan'):.0f} | "
                 f"{np.percentile(lat, 95) if lat.size else float('nan'):.0f} |")
    used = cpu / wall
    lines += ["",
              f"CPU: {used:.2f} of {ncpu} cores for the process ({used / ncpu:.0%}); capture and FFmpeg decoder threads "
              f"{decode_cpu / wall:.2f} cores ({decode_cpu / max(cpu, 1e-9):.0%} of the process), the rest "
              f"(preprocess, inference, postprocess, gRPC) {(cpu - decode_cpu) / wall:.2f} cores",
              f"decode cost: {decode_cpu / max(tot_in * wall, 1) * 1000:.2f} ms of CPU per captured frame; "
              f"inference side: {(cpu - decode_cpu) / max(tot_out * wall, 1) * 1000:.1f} ms of CPU per result"]
    source_rate = 30.0 * args.streams
    if tot_in < 0.9 * source_rate:
        bound = (f"decode: captures read {tot_in:.0f} of the {source_rate:.0f} frames/s the sources play")
    elif args.fps and tot_out < 0.9 * args.fps * args.streams:
        bound = (f"inference: {tot_out:.1f} results/s against the {args.fps * args.streams:g} asked for; "
                 f"{tot_drop:.1f} frames/s replaced before inference took them")
    else:
        bound = "neither: every stream got its target fps"
    load = os.getloadavg()[0]
    if used < 0.8 * ncpu and not bound.startswith("neither"):
        bound += (f" -- yet this process used only {used:.2f} of {ncpu} cores: the rest went to other work on "
                  f"the machine (load average {load:.1f} at the end)")
    lines.append(f"bound: {bound}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgeinfer_bench.streams", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=10)
    ap.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of the generated video")
    ap.add_argument("--fps", type=float, default=5.0, help="target fps per stream (0 = as fast as it goes)")
    ap.add_argument("--seconds", type=float, default=30.0, help="measurement window")
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--max-batch", type=int, default=1)
    ap.add_argument("--video", default=str(DEFAULT_VIDEO))
    ap.add_argument("--onnx", default=str(DEFAULT_ONNX), help="CenterFace ONNX file")
    args = ap.parse_args(argv)
    print(run(args), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
