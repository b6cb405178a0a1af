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

On a GPU host (`--device gpu --size as-is --decode gpu,cpu --in-flight 1,3 --streams 16,32,64
--fps 0` with a 1080p30 H.264 video) it finds how many streams are sustained at full rate with
NVDEC against CPU decode, one daemon per row, in one run.

Not a timed test: numbers, for docs/performance.md.
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from edgeinfer_bench.environment import tree_cpu_seconds
from edgeinfer_bench.profile import thread_busy, thread_stats

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


def _timed(read):
    """(the monotonic time halfway through the reading, what `read()` returned)."""
    t0 = time.monotonic()
    value = read()
    return (t0 + time.monotonic()) / 2, value


def _busiest_threads(before: dict, after: dict, wall: float, top: int = 6) -> str:
    """CPU cores used by each kind of thread (Python's name for it, else the OS's, numbering dropped),
    busiest first: a kind near one core on a many-core machine is what bounds the process.
    `before`/`after`: profile.thread_stats of this process."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    kinds = {tid: re.sub(r"[-_:]?s?[0-9]+$", "", names.get(tid, comm)) or comm for tid, (comm, _) in after.items()}
    busy = thread_busy({tid: t for tid, (_, t) in before.items()}, {tid: t for tid, (_, t) in after.items()},
                       wall, kinds)
    return ", ".join(f"{kind} {cores:.2f}" for kind, cores in busy[:top])


def _decode_cpu(before: dict, after: dict, readers: set[int]) -> float:
    """CPU seconds of the capture threads and FFmpeg's decoder threads (named "av:<codec>:...")."""
    ticks = 0
    for tid, (name, t) in after.items():
        if tid in readers or name.startswith("av:"):
            ticks += t - before.get(tid, (name, 0))[1]
    return ticks / os.sysconf("SC_CLK_TCK")


class _Daemon:
    def __init__(self, config):
        from edgeinfer.process.daemon import Daemon

        self.daemon = Daemon(config, tick_s=0.5)
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, name="event-loop", daemon=True)

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


class _Supervised:
    """The daemon as [server] processes > 1 runs it (process/supervisor.py), read through its API:
    each process pulls a share of the streams in an interpreter of its own."""

    def __init__(self, config):
        from edgeinfer.process.supervisor import Supervisor

        self.loaded = threading.Event()
        self.sup = Supervisor(config, tick_s=0.5, on_loaded=lambda _states: self.loaded.set())
        self.thread = threading.Thread(target=self._run, name="supervisor", daemon=True)

    def _run(self):
        self.sup.run()

    def start(self):
        self.address = self.sup.start(timeout=600)
        self.thread.start()
        if not self.loaded.wait(600):
            raise SystemExit("the processes did not finish loading")
        return self

    def stats(self) -> dict:
        from edgeinfer_client import Client

        with Client(self.address, timeout=30) as c:
            return {s.name: s for s in c.streams()}

    def cpu(self) -> float:
        """CPU seconds (user + system) of every process of the daemon."""
        return sum(tree_cpu_seconds(pid) for pid in self.sup.pids)

    def stop(self):
        self.sup.request_stop()
        self.thread.join(120)


def _input_size(args) -> tuple[int, int]:
    width, height = (int(v) for v in args.input.lower().split("x"))
    return width, height


def _config(args, video: Path, work: Path, streams: int, decode: str, in_flight: int = 1, processes: int = 1):
    from edgeinfer.config import parse_config

    on_gpu = args.device == "gpu"
    model = {"name": "faces", "onnx": str(Path(args.onnx).resolve()),
             "input": {"color": "rgb", "resize": "letterbox", "size": list(_input_size(args)), "pad_value": 0,
                       "decode": "auto" if on_gpu else "cpu"},
             "postprocess": {"task": "centerface"},
             "batching": {"max_batch": args.max_batch, "max_queue": max(256, 2 * streams * in_flight)}}
    if on_gpu:
        model["onnxruntime"] = {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
    if args.precision != "fp32":
        # The accuracy gate compares against fp32 on frames of the streams' own video.
        model["precision"] = [args.precision, "fp32"]
        model["calibration"] = {"images": str(video.resolve()), "max_images": 16}
    server = {"listen": "127.0.0.1:0", "workers": args.workers}
    if processes > 1:
        server.update(processes=processes, grace_period_s=1.0)
    return parse_config({
        "server": server,
        "metrics": {"enabled": False},
        "cache": {"dir": str(work / "cache")},
        "models": [model],
        "streams": [{"name": f"s{i:02d}", "source": str(video), "model": "faces", "fps": args.fps, "decode": decode,
                  "in_flight": in_flight}
                    for i in range(streams)],
    })


def run(args, on_row=lambda text: None) -> str:
    """Every (decode, stream count) of the arguments, each on its own daemon; their reports and a summary.
    `on_row` gets each row's report as soon as it is measured."""
    work = Path(tempfile.mkdtemp(prefix="edgeinfer-bench-streams-"))
    if args.size == "as-is":
        video, size = Path(args.video), "as-is"
    else:
        width, height = (int(v) for v in args.size.lower().split("x"))
        video, size = make_video(Path(args.video), work / f"loop-{width}x{height}.mp4", (width, height)), args.size
    reports, summary = [], []
    rows = [(decode, processes, in_flight, count)
            for decode in [d.strip() for d in args.decode.split(",") if d.strip()]
            for processes in (int(n) for n in str(args.processes).split(","))
            for in_flight in (int(n) for n in str(args.in_flight).split(","))
            for count in (int(n) for n in str(args.streams).split(","))]
    for decode, processes, in_flight, count in rows:
        try:
            text, row = run_one(args, video, size, work, count, decode, in_flight, processes)
        except Exception as exc:  # noqa: BLE001 - one row failing must not lose the rows measured
            text = (f"{count} streams, decode {decode}, {processes} processes, in_flight {in_flight}: failed: "
                    f"{type(exc).__name__}: {exc}")
            row = f"| {decode} | {processes} | {in_flight} | {count} | failed: {type(exc).__name__}: {exc} | | | | | | |"
        on_row(text)
        reports.append(text)
        summary.append(row)
    if len(summary) == 1:
        return reports[0]
    target = f"{args.fps:g} fps" if args.fps else "every frame"
    lines = ["", f"summary ({args.device} model, target {target} per stream):", "",
             "| decode | processes | in flight | streams | decoded on | results/s | slowest stream fps out | "
             "all at 97% of target | latency P50 ms | P95 ms | cores |",
             "| --- | ---: | ---: | ---: | --- | ---: | ---: | --- | ---: | ---: | ---: |"]
    lines += [row for row in summary]
    return "\n\n".join(reports) + "\n" + "\n".join(lines)


def _watch_all(address: str, names: list[str], timeout: float, measuring, stop, results) -> None:
    """Child process: watch every stream, keep the latency of each result taken while `measuring`."""
    from edgeinfer_client import Client

    latencies: dict[str, list[float]] = {name: [] for name in names}

    def watch(name):
        with Client(address) as c:
            try:
                for r in c.watch(name, timeout=timeout):
                    if measuring.is_set():
                        latencies[name].append(r.latency_s)
                    if stop.is_set():
                        return
            except Exception:  # noqa: BLE001 - the daemon stopping ends the watch
                return

    threads = [threading.Thread(target=watch, args=(name,), daemon=True) for name in names]
    for t in threads:
        t.start()
    stop.wait(timeout)
    results.put({name: list(values) for name, values in latencies.items()})


def run_one(args, video: Path, size: str, work: Path, count: int, decode: str, in_flight: int = 1,
            processes: int = 1) -> tuple[str, str]:
    cfg = _config(args, video, work, count, decode, in_flight, processes)
    if processes > 1:
        return _run_supervised(args, cfg, video, size, count, decode, in_flight, processes)
    d = _Daemon(cfg).start()
    address = f"127.0.0.1:{d.daemon.port}"
    names = [s.name for s in cfg.streams]
    # Subscribers are other programs: watching from this process would share its GIL with the
    # daemon and charge the daemon's CPU figure with the clients' work.
    measuring, stop, results, watcher = _start_watching(address, names, args)
    time.sleep(args.warmup)
    streams = list(d.daemon.streams)
    # Every reading carries the time it was taken: on a busy interpreter this thread can wait
    # seconds for the GIL between two readings, and one window for all would skew the rates.
    before = {s.name: _timed(s.stats) for s in streams}
    (w0, (cpu0, threads0)) = _timed(lambda: (time.process_time(), thread_stats(os.getpid())))
    measuring.set()
    time.sleep(args.seconds)
    measuring.clear()
    (w1, (cpu1, threads1)) = _timed(lambda: (time.process_time(), thread_stats(os.getpid())))
    after = {s.name: _timed(s.stats) for s in streams}
    wall, cpu = w1 - w0, cpu1 - cpu0
    lag = max(t for t, _ in after.values()) - w1
    readers = set().union(*(s.capture.reader_tids for s in streams))
    decode_cpu = _decode_cpu(threads0, threads1, readers)
    busiest = _busiest_threads(threads0, threads1, wall)
    model_state = d.daemon.registry.get("faces").state_reason
    stop.set()
    latencies = results.get(timeout=60)
    watcher.join(10)
    d.stop()
    return _report(args, video, size, count, decode, in_flight, before, after, latencies, wall, cpu,
                   decode_cpu, f"busiest threads (cores, by kind): {busiest}", model_state, lag, 1)


def _start_watching(address: str, names: list[str], args):
    """The subscriber process; returns (measuring, stop, results, process)."""
    ctx = multiprocessing.get_context("spawn")
    measuring, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
    watcher = ctx.Process(target=_watch_all, args=(address, names, args.warmup + args.seconds + 60, measuring,
                                                   stop, results), daemon=True)
    watcher.start()
    return measuring, stop, results, watcher


def _run_supervised(args, cfg, video: Path, size: str, count: int, decode: str, in_flight: int, processes: int
                    ) -> tuple[str, str]:
    """run_one for [server] processes > 1: the counters come through ListStreams, the CPU from /proc."""
    d = _Supervised(cfg).start()
    measuring, stop, results, watcher = _start_watching(d.address, [s.name for s in cfg.streams], args)
    time.sleep(args.warmup)
    t0, first = _timed(d.stats)
    w0, cpu0 = _timed(d.cpu)
    measuring.set()
    time.sleep(args.seconds)
    measuring.clear()
    w1, cpu1 = _timed(d.cpu)
    t1, last = _timed(d.stats)
    stop.set()
    latencies = results.get(timeout=60)
    watcher.join(10)
    pids = d.sup.pids
    d.stop()
    before = {name: (t0, info) for name, info in first.items()}
    after = {name: (t1, info) for name, info in last.items()}
    return _report(args, video, size, count, decode, in_flight, before, after, latencies, w1 - w0, cpu1 - cpu0,
                   None, f"{processes} daemon processes (pids {', '.join(map(str, pids))})",
                   f"{processes} processes", t1 - w1, processes)


def _report(args, video: Path, size: str, count: int, decode: str, in_flight: int, before: dict, after: dict,
            latencies: dict, wall: float, cpu: float, decode_cpu, threads_line: str, model_state: str,
            lag: float, processes: int) -> tuple[str, str]:
    """One row's report and its summary line. `decode_cpu`: the capture threads' CPU seconds, where
    known (one process); `before`/`after`: each stream's (time read, counters)."""
    ncpu = os.cpu_count() or 1
    decoded_on = sorted({a.decode for _, a in after.values()})
    first = next((a for _, a in after.values()), None)
    native = f"{first.width}x{first.height}" if first is not None else size
    lines = [f"edgeinfer stream benchmark: {count} streams of a {native} looped video ({video.name}), decode "
             f"{decode} (decoded on {', '.join(decoded_on)}), model faces (CenterFace, "
             f"{args.input} letterbox, "
             f"{args.device}: {model_state}), target fps {args.fps:g} per stream, {in_flight} in flight each, "
             f"max_batch {args.max_batch}, "
             f"{args.workers} workers",
             f"machine: {platform.node()} {platform.machine()}, {ncpu} CPUs, load average before "
             f"{os.getloadavg()[0]:.1f}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
             f"window {wall:.1f} s after {args.warmup:g} s warm-up; reading every stream's counters took "
             f"{lag:.2f} s (time this thread waited for the interpreter)",
             "",
             "| stream | fps in | fps out | dropped late /s | latency P50 ms | P95 ms |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    tot_in = tot_out = tot_drop = 0.0
    all_lat: list[float] = []
    outs: list[float] = []
    for name in sorted(after):
        (ta, a), (tb, b) = after[name], before[name]
        span = ta - tb
        fin = (a.frames_in - b.frames_in) / span
        fout = (a.frames_processed - b.frames_processed) / span
        drop = (a.frames_dropped - b.frames_dropped) / span
        lat = np.array(latencies[name]) * 1000
        all_lat += list(lat)
        outs.append(fout)
        p50, p95 = (np.percentile(lat, 50), np.percentile(lat, 95)) if lat.size else (float("nan"),) * 2
        tot_in, tot_out, tot_drop = tot_in + fin, tot_out + fout, tot_drop + drop
        if count <= 16:
            lines.append(f"| {name} | {fin:.1f} | {fout:.2f} | {drop:.2f} | {p50:.0f} | {p95:.0f} |")
    lat = np.array(all_lat)
    p50_all = np.percentile(lat, 50) if lat.size else float("nan")
    p95_all = np.percentile(lat, 95) if lat.size else float("nan")
    if count > 16:
        lines.append(f"| each of {count} (slowest / median fps out) | | {min(outs):.2f} / {np.median(outs):.2f} | | | |")
    lines.append(f"| all | {tot_in:.1f} | {tot_out:.2f} | {tot_drop:.2f} | {p50_all:.0f} | {p95_all:.0f} |")
    used = cpu / wall
    lines += ["", f"CPU: {used:.2f} of {ncpu} cores for the daemon ({used / ncpu:.0%})"]
    if decode_cpu is not None:
        lines[-1] += (f"; capture and decoder threads {decode_cpu / wall:.2f} cores "
                      f"({decode_cpu / max(cpu, 1e-9):.0%} of the process), the rest (preprocess, inference, "
                      f"postprocess, gRPC) {(cpu - decode_cpu) / wall:.2f} cores")
        lines.append(f"decode cost: {decode_cpu / max(tot_in * wall, 1) * 1000:.2f} ms of CPU per captured frame; "
                     f"inference side: {(cpu - decode_cpu) / max(tot_out * wall, 1) * 1000:.1f} ms of CPU per result")
    lines.append(threads_line)
    native_rate = 30.0 * count
    target = args.fps * count if args.fps else native_rate
    if tot_in < 0.9 * native_rate:
        bound = f"decode: captures read {tot_in:.0f} of the {native_rate:.0f} frames/s the sources play"
    elif tot_out < 0.9 * target:
        bound = (f"inference: {tot_out:.1f} results/s against the {target:g} asked for; "
                 f"{tot_drop:.1f} frames/s replaced before inference took them")
    else:
        bound = "neither: every stream got its target fps"
    load = os.getloadavg()[0]
    if used < 0.8 * ncpu and not bound.startswith("neither") and args.device == "cpu":
        bound += (f" -- yet the daemon used only {used:.2f} of {ncpu} cores: the rest went to other work on "
                  f"the machine (load average {load:.1f} at the end)")
    lines.append(f"bound: {bound}")
    per_stream_target = args.fps or 30.0
    row = (f"| {decode} | {processes} | {in_flight} | {count} | {', '.join(decoded_on)} | {tot_out:.1f} | {min(outs) if outs else 0:.2f} | "
           f"{'yes' if outs and min(outs) >= 0.97 * per_stream_target else 'no'} | {p50_all:.0f} | {p95_all:.0f} | "
           f"{used:.1f} |")
    return "\n".join(lines), row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgeinfer_bench.streams", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", default="10", help="stream count, or a comma-separated list of them")
    ap.add_argument("--decode", default="cpu", help="the streams' decode: cpu, gpu, auto, or a list (each its own run)")
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu",
                    help="where the model runs: ONNX Runtime on the CPU, or its CUDA provider with decode = auto")
    ap.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of the generated video, or as-is: the video itself")
    ap.add_argument("--fps", type=float, default=5.0, help="target fps per stream (0 = as fast as it goes)")
    ap.add_argument("--seconds", type=float, default=30.0, help="measurement window")
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--max-batch", type=int, default=1)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"],
                    help="the detector's precision, behind the accuracy gate (fp32 if the gate refuses it)")
    ap.add_argument("--processes", default="1",
                    help="[server] processes (the streams spread over them), or a comma-separated list of counts")
    ap.add_argument("--in-flight", default="1", help="[[streams]] in_flight, or a comma-separated list of them")
    ap.add_argument("--switch-interval-ms", type=float, default=0.0,
                    help="the interpreter's GIL switch interval for the daemon (0: Python's default, 5 ms)")
    ap.add_argument("--input", default="640x480",
                    help="the model's input WIDTHxHEIGHT, multiples of 32 (CenterFace's strides); frames are letterboxed")
    ap.add_argument("--video", default=str(DEFAULT_VIDEO))
    ap.add_argument("--onnx", default=str(DEFAULT_ONNX), help="CenterFace ONNX file")
    args = ap.parse_args(argv)
    if any(v % 32 for v in _input_size(args)):
        ap.error(f"--input {args.input}: CenterFace needs a width and height that are multiples of 32")
    if args.switch_interval_ms:
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    out = run(args, on_row=lambda text: print(text + "\n", flush=True))
    if "\nsummary (" in out:  # the rows are printed already
        print(out[out.index("\nsummary ("):], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
