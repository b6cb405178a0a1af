"""The decode side of stream density: how many streams of one video the daemon's capture and
preprocessing sustain, CPU decode against NVDEC, measured in one run; prints numbers.

    python -m edgeinfer_bench.stream_decode --video cam_1080p30.mp4 --streams 1,16,64 --decode cpu,gpu

For each decode and stream count, N threads each open the video as the daemon's
capture does (edgeinfer.streams: OpenCV/FFmpeg for "cpu", NVDEC through PyNvVideoCodec
for "gpu"), read frames as fast as they come, looping at the end, and turn each into
the model's input as the daemon's serving path would: the CPU path's resize and
normalization (model/families/preprocess.py) for CPU frames; the NV12 kernel into a
device tensor for NVDEC frames, which never leave the GPU. After a warm-up it counts
frames for `--seconds` and prints the total rate, the slowest and median stream, how
many streams of `--target-fps` that rate carries, and the cores the process used.

No model runs: this is the bound the decode side puts on stream density. The detector's
own rate bounds it from the other side (the `edgeinfer bench` reports).
"""
from __future__ import annotations

import argparse
import os
import platform
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from edgeinfer.config import InputConfig, StreamConfig


@dataclass
class _Reader:
    """One stream's thread: frames counted, and why it stopped if it did."""

    frames: int = 0
    error: str = ""
    decode: str = ""
    thread: threading.Thread = field(default=None, repr=False)


def _open(video: str, decode: str):
    from edgeinfer.streams.decode import open_source

    source, note = open_source(StreamConfig(name="bench", source=video, model="m", decode=decode))
    if decode == "gpu" and source.decode != "gpu":
        raise RuntimeError(note or "NVDEC did not open the video")
    return source


def _cpu_consumer(input_cfg: InputConfig):
    from edgeinfer.model.families.preprocess import Preprocessor

    pre = Preprocessor(input_cfg)

    def consume(frame) -> None:
        pre(frame)

    return consume, lambda: None


def _gpu_consumer(input_cfg: InputConfig, kernel):
    from edgeinfer.model.families.preprocess import Preprocessor
    from edgeinfer.runtime.gpu.image_job import ResizeJob
    from edgeinfer.runtime.gpu.memory import DeviceArray, DeviceBuffer, Stream
    from edgeinfer.runtime.gpu.preprocess_kernel import Normalization

    pre, norm = Preprocessor(input_cfg), Normalization.from_input_config(input_cfg)
    stream = Stream(kernel.device)
    out = DeviceBuffer(3 * pre.height * pre.width * 4, kernel.device)
    dst = DeviceArray(out, np.float32, (1, 3, pre.height, pre.width))
    plans: dict = {}

    def consume(frame) -> None:
        size = (frame.width, frame.height)
        if size not in plans:
            p = pre.resize_plan(*size)
            plans[size] = (p.resized_w, p.resized_h, p.dx, p.dy)
        rw, rh, dx, dy = plans[size]
        job = ResizeJob(1, frame.width, frame.height, rw, rh, dx, dy, swap_rb=input_cfg.color == "rgb", frame=frame)
        kernel.launch_nv12_resize(frame, job, dst, 0, norm, float(input_cfg.pad_value), stream)
        stream.synchronize()

    def close() -> None:
        out.close()
        stream.close()

    return consume, close


def _run_reader(reader: _Reader, video: str, decode: str, input_cfg: InputConfig, kernel,
                start: threading.Event, stop: threading.Event, counting: threading.Event) -> None:
    from edgeinfer.streams.sources import SourceError

    close = None
    source = None
    try:
        source = _open(video, decode)
        reader.decode = source.decode
        consume, close = _gpu_consumer(input_cfg, kernel) if decode == "gpu" else _cpu_consumer(input_cfg)
        start.wait()
        while not stop.is_set():
            try:
                frame = source.read()
            except SourceError:
                if not source.rewind():
                    source.close()
                    source = _open(video, decode)
                continue
            consume(frame)
            if counting.is_set():
                reader.frames += 1
    except Exception as exc:  # noqa: BLE001 - reported in the table
        reader.error = f"{type(exc).__name__}: {exc}"
    finally:
        if close is not None:
            close()
        if source is not None:
            source.close()


def measure(video: str, decode: str, streams: int, input_cfg: InputConfig, seconds: float, warmup: float,
            kernel=None) -> dict:
    """One configuration: `streams` readers for `warmup` + `seconds`; their rates and the CPU used."""
    start, stop, counting = threading.Event(), threading.Event(), threading.Event()
    readers = [_Reader() for _ in range(streams)]
    for r in readers:
        r.thread = threading.Thread(target=_run_reader, daemon=True,
                                    args=(r, video, decode, input_cfg, kernel, start, stop, counting))
        r.thread.start()
    start.set()
    time.sleep(warmup)
    t0, cpu0 = time.perf_counter(), os.times()
    counting.set()
    time.sleep(seconds)
    counting.clear()
    wall, cpu1 = time.perf_counter() - t0, os.times()
    stop.set()
    for r in readers:
        r.thread.join(30)
    rates = sorted(r.frames / wall for r in readers)
    errors = sorted({r.error for r in readers if r.error})
    return {"decode": decode, "streams": streams, "total_fps": sum(rates), "min_fps": rates[0],
            "median_fps": float(np.median(rates)),
            "cores": (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / wall, "errors": errors}


def report(rows: list[dict], target_fps: float, video_desc: str) -> str:
    lines = [f"stream decode + preprocessing, {video_desc}; {platform.node()}, {os.cpu_count()} CPUs",
             "", "| decode | streams | total fps | slowest stream fps | median fps | "
             f"streams of {target_fps:g} fps carried | all at {target_fps:g} fps | cores used |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for r in rows:
        if r["errors"]:
            lines.append(f"| {r['decode']} | {r['streams']} | failed: {'; '.join(r['errors'])[:200]} | | | | | |")
            continue
        lines.append(f"| {r['decode']} | {r['streams']} | {r['total_fps']:.0f} | {r['min_fps']:.1f} | "
                     f"{r['median_fps']:.1f} | {int(r['total_fps'] // target_fps)} | "
                     f"{'yes' if r['min_fps'] >= target_fps else 'no'} | {r['cores']:.1f} |")
    return "\n".join(lines)


def _video_desc(video: str) -> str:
    import cv2

    cap = cv2.VideoCapture(video)
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps = cap.get(cv2.CAP_PROP_FPS)
    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode(errors="replace")
    cap.release()
    return f"{os.path.basename(video)} ({w}x{h} {fps:g} fps {fourcc})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgeinfer_bench.stream_decode", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", required=True, help="the video every stream plays (a file)")
    ap.add_argument("--streams", default="1,16,64", help="comma-separated stream counts")
    ap.add_argument("--decode", default="cpu,gpu", help="cpu, gpu or both, in this order")
    ap.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of the model input (letterboxed)")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--target-fps", type=float, default=30.0)
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    input_cfg = InputConfig(resize="letterbox", size=[w, h], pad_value=0, color="rgb")
    decodes = [d.strip() for d in args.decode.split(",") if d.strip()]
    kernel, no_gpu = None, ""
    if "gpu" in decodes:
        try:
            from edgeinfer.runtime.gpu.preprocess_kernel import PreprocessKernel

            kernel = PreprocessKernel(0)
        except Exception as exc:  # noqa: BLE001 - no cuda-python, no GPU: said in the table
            no_gpu = f"{type(exc).__name__}: {exc}"
    rows = []
    for decode in decodes:
        for n in (int(v) for v in args.streams.split(",")):
            if decode == "gpu" and no_gpu:
                rows.append({"decode": decode, "streams": n, "errors": [no_gpu]})
                continue
            rows.append(measure(args.video, decode, n, input_cfg, args.seconds, args.warmup, kernel))
            print(rows[-1], flush=True)
    print(report(rows, args.target_fps, _video_desc(args.video)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
