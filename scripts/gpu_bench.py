#!/usr/bin/env python3
"""GPU checks and benchmark of edgeinfer's GPU data path. Run it on the GPU machine.

    python3 scripts/gpu_bench.py --assets DIR --out DIR [--duration 10] [--concurrency 32]

DIR (assets) is laid out like assets/: models/efficientnet-lite0.onnx and media/ photos.
Steps, each printed as it goes and summarized in one table at the end:

 1. the NVRTC preprocessing kernel against the CPU path (pipeline/preprocess.py)
    on real photos, for three normalizations; plus its time against numpy's;
 2. the IO-binding runner against plain CUDA EP and CPU on EfficientNet-Lite0
    (real photos, preprocessed by the daemon's Preprocessor), the device-fed path
    (kernel output bound straight to the session), and call latency with/without binding;
 3. ResNet-50 (torchvision, random weights, exported here: dynamic batch, opset 17)
    served by the edgeinfer daemon on ONNX Runtime CUDA EP with batching, driven
    by `concurrency` client processes sending JPEGs for `duration` s, against the
    in-process ceiling in the same run (`edgeinfer bench` machinery).

Needs onnxruntime-gpu, cuda-python, torch + torchvision (the device image has
all but onnxruntime-gpu, which travels as wheels: shared/device/README.md).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import json
import os
import pickle
import subprocess
import sys
import time
import traceback
from typing import Optional
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "daemon"), str(ROOT / "clients")]

# The ResNet benchmark's providers (a CPU dry run of this script swaps in CPU alone).
RESNET_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
ROWS: list[tuple[str, str, str]] = []  # (check, result, detail) for the final table


def row(check: str, result: str, detail: str = "") -> None:
    ROWS.append((check, result, detail))
    print(f"[gpu_bench] {check}: {result} {detail}", flush=True)


def cuda_library_path() -> None:
    """Put the pip-installed CUDA/cuDNN libraries on LD_LIBRARY_PATH for child processes.

    onnxruntime-gpu finds them in this process after torch is imported; the
    daemon and ceiling children are fresh interpreters that import only
    onnxruntime, and the dynamic loader reads LD_LIBRARY_PATH at their start.
    """
    try:
        import nvidia  # namespace package of the nvidia-* wheels
    except ImportError:
        return
    dirs = sorted({d for base in nvidia.__path__ for d in glob.glob(os.path.join(base, "*", "lib"))})
    old = os.environ.get("LD_LIBRARY_PATH", "")
    os.environ["LD_LIBRARY_PATH"] = ":".join(dirs + ([old] if old else []))


# -- 1. the preprocessing kernel -------------------------------------------------------------

def check_kernel(media: Path) -> dict:
    import cv2
    import numpy as np

    from edgeinfer.config import InputConfig
    from edgeinfer.gpu.memory import DeviceArray, DeviceBuffer, Stream, check, cudart
    from edgeinfer.gpu.preprocess_kernel import Normalization, PreprocessKernel, reference_normalize
    from edgeinfer.pipeline.preprocess import Preprocessor

    out = {}
    kernel = PreprocessKernel(0)
    row("kernel compiled", kernel.target)
    cases = {
        "efficientnet (rgb, mean 127, std 128)": ("rgb", [127.0] * 3, [128.0] * 3, 1.0, "center-crop", [224, 224]),
        "imagenet (rgb, /255, mean/std)": ("rgb", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 1 / 255,
                                           "center-crop", [224, 224]),
        "centerface (rgb raw, letterbox 640x480)": ("rgb", [0.0] * 3, [1.0] * 3, 1.0, "letterbox", [640, 480]),
        "bgr, no swap": ("bgr", [10.0, 20.0, 30.0], [2.0, 3.0, 4.0], 1.0, "stretch", [320, 240]),
    }
    photos = sorted(p for p in media.iterdir() if p.suffix.lower() in (".png", ".jpg"))
    with Stream(0) as stream:
        for name, (color, mean, std, scale, resize, size) in cases.items():
            cfg = InputConfig(color=color, resize=resize, size=size, mean=mean, std=std, scale=scale)
            pre = Preprocessor(cfg)
            norm = Normalization.from_input_config(cfg)
            worst, exact = 0.0, 0
            for p in photos:
                bgr = cv2.imread(str(p))
                cpu_tensor, _ = pre(bgr)
                # The kernel takes the resized uint8 image (OpenCV resizes on the CPU either way).
                resized, _ = pre._resize(bgr, bgr.shape[1], bgr.shape[0])
                gpu_tensor = kernel.normalize(resized, norm, swap_rb=color == "rgb", stream=stream)[0]
                diff = float(np.max(np.abs(gpu_tensor - cpu_tensor)))
                worst = max(worst, diff)
                exact += int(np.array_equal(gpu_tensor, cpu_tensor))
            ok = worst <= 1e-5
            row(f"kernel vs CPU: {name}", "PASS" if ok else "FAIL",
                f"max|diff| {worst:.3g} over {len(photos)} photos, {exact} bit-identical")
            out[name] = {"max_abs_diff": worst, "photos": len(photos), "bit_identical": exact, "pass": ok}
        # Time: a batch of 32 224x224 images, kernel (CUDA events) vs the numpy normalization.
        rng = np.random.default_rng()
        imgs = rng.integers(0, 256, (32, 224, 224, 3), dtype=np.uint8)
        norm = Normalization.from_config(1.0, [127.0] * 3, [128.0] * 3)
        src = DeviceArray.from_host(imgs, stream)
        dst_buf = DeviceBuffer(32 * 3 * 224 * 224 * 4)
        dst = DeviceArray(dst_buf, np.float32, (32, 3, 224, 224))
        rt = cudart()
        start, stop = check(rt.cudaEventCreate(), "cudaEventCreate"), check(rt.cudaEventCreate(), "cudaEventCreate")
        for _ in range(5):
            kernel.launch(src, dst, norm, True, stream)
        reps = 200
        check(rt.cudaEventRecord(start, stream.handle), "cudaEventRecord")
        for _ in range(reps):
            kernel.launch(src, dst, norm, True, stream)
        check(rt.cudaEventRecord(stop, stream.handle), "cudaEventRecord")
        check(rt.cudaEventSynchronize(stop), "cudaEventSynchronize")
        gpu_ms = check(rt.cudaEventElapsedTime(start, stop), "cudaEventElapsedTime") / reps
        got = dst.to_host(stream)
        ok = float(np.max(np.abs(got - reference_normalize(imgs, norm, True)))) <= 1e-5
        t0 = time.perf_counter()
        for _ in range(5):
            reference_normalize(imgs, norm, True)
        cpu_ms = (time.perf_counter() - t0) / 5 * 1e3
        bytes_moved = imgs.nbytes + got.nbytes
        row("kernel time, 32x224x224x3", "PASS" if ok else "FAIL",
            f"GPU {gpu_ms * 1e3:.1f} us ({bytes_moved / (gpu_ms * 1e-3) / 1e9:.0f} GB/s) vs numpy {cpu_ms:.1f} ms")
        out["timing_32x224"] = {"gpu_ms": gpu_ms, "numpy_ms": cpu_ms, "gbps": bytes_moved / (gpu_ms * 1e-3) / 1e9,
                                "random_input_pass": ok}
        dst_buf.close()
        src.buffer.close()
    kernel.close()
    return out


# -- 2. IO binding ------------------------------------------------------------------------------

def check_iobinding(effnet: Path, media: Path) -> dict:
    import cv2
    import numpy as np
    import onnxruntime as ort

    from edgeinfer.backends.onnxruntime.runner import OnnxRuntimeRunner
    from edgeinfer.config import InputConfig
    from edgeinfer.gpu.memory import DeviceArray, DeviceBuffer, Stream
    from edgeinfer.gpu.preprocess_kernel import Normalization, PreprocessKernel
    from edgeinfer.pipeline.preprocess import Preprocessor

    def session(provider):
        o = ort.SessionOptions()
        o.log_severity_level = 3
        return ort.InferenceSession(str(effnet), o, providers=[provider, "CPUExecutionProvider"])

    cfg = InputConfig(color="rgb", resize="center-crop", size=[224, 224], mean=[127.0] * 3, std=[128.0] * 3)
    pre = Preprocessor(cfg)
    photos = sorted(p for p in media.iterdir() if p.suffix.lower() in (".png", ".jpg"))
    bgrs = [cv2.imread(str(p)) for p in photos]
    x = np.stack([pre(b)[0] for b in bgrs])
    bound = OnnxRuntimeRunner(session("CUDAExecutionProvider"), io_binding=True)
    plain = OnnxRuntimeRunner(session("CUDAExecutionProvider"), io_binding=False)
    cpu = OnnxRuntimeRunner(session("CPUExecutionProvider"))
    row("IO binding", bound.info.details.get("io_binding", "?"), f"provider {bound.info.details['provider']}")
    a = bound.infer({"input": x})["logits"]
    b = plain.infer({"input": x})["logits"]
    c = cpu.infer({"input": x})["logits"]
    top1 = [int(v) for v in a.argmax(1)]
    same = bool(np.array_equal(a.argmax(1), b.argmax(1)) and np.array_equal(a.argmax(1), c.argmax(1)))
    d_plain, d_cpu = float(np.max(np.abs(a - b))), float(np.max(np.abs(a - c)))
    row("IO binding vs plain CUDA EP vs CPU (EfficientNet-Lite0)", "PASS" if same and d_plain <= 1e-3 else "FAIL",
        f"top-1 {top1} equal={same}; max|diff| vs plain {d_plain:.3g}, vs CPU {d_cpu:.3g}")
    out = {"top1": top1, "top1_equal": same, "max_diff_vs_plain_cuda": d_plain, "max_diff_vs_cpu": d_cpu}
    # Device-fed path: resized uint8 on the device -> kernel -> bound straight into the session.
    kernel = PreprocessKernel(0)
    norm = Normalization.from_input_config(cfg)
    with Stream(0) as stream:
        resized = np.stack([pre._resize(cv2.cvtColor(bg, cv2.COLOR_BGR2RGB), bg.shape[1], bg.shape[0])[0]
                            for bg in bgrs])
        src = DeviceArray.from_host(resized, stream)
        buf = DeviceBuffer(x.nbytes)
        dst = DeviceArray(buf, np.float32, x.shape)
        kernel.launch(src, dst, norm, swap_rb=False, stream=stream)  # already RGB
        stream.synchronize()
        e = bound.io_binding.run_device({"input": dst})["logits"]
        buf.close()
        src.buffer.close()
    kernel.close()
    d_dev = float(np.max(np.abs(e - a)))
    row("device-fed (kernel -> bound input) vs host-fed", "PASS" if d_dev <= 1e-4 else "FAIL", f"max|diff| {d_dev:.3g}")
    out["max_diff_device_fed"] = d_dev
    # Call latency with and without binding, batch 1 and 32.
    rng = np.random.default_rng()
    for batch in (1, 32):
        feed = {"input": rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)}
        times = {}
        for name, r in (("io_binding", bound), ("plain", plain)):
            for _ in range(5):
                r.infer(feed)
            n = 100 if batch == 1 else 30
            t0 = time.perf_counter()
            for _ in range(n):
                r.infer(feed)
            times[name] = (time.perf_counter() - t0) / n * 1e3
        row(f"EfficientNet call latency, batch {batch}", "info",
            f"IO binding {times['io_binding']:.2f} ms, plain CUDA EP {times['plain']:.2f} ms "
            f"({batch / times['io_binding'] * 1e3:.0f} vs {batch / times['plain'] * 1e3:.0f} img/s)")
        out[f"latency_ms_batch{batch}"] = times
    for r in (bound, plain, cpu):
        r.deactivate()
    return out


# -- 3. ResNet-50 served vs in-process ----------------------------------------------------------------

def export_resnet50(path: Path) -> Path:
    import torch
    import torchvision

    model = torchvision.models.resnet50(weights=None).eval()
    x = torch.randn(2, 3, 224, 224)
    try:  # the TorchScript exporter: dynamic_axes, exact opset 17
        torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"], opset_version=17,
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, dynamo=False)
    except Exception as exc:  # noqa: BLE001 - newer torch: the dynamo exporter
        print(f"[gpu_bench] TorchScript export failed ({exc}); trying the dynamo exporter", flush=True)
        torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"], opset_version=17,
                          dynamic_shapes={"x": {0: torch.export.Dim("N", min=1, max=1024)}}, dynamo=True)
    return path


def diagnose_runner(work: Path, algos: list[str]) -> dict:
    """What a batching daemon's calls cost on ONNX Runtime CUDA EP, per cuDNN algorithm-search mode.

    For each `cudnn_conv_algo_search` mode, one ResNet-50 runner (plain
    session.run, as the daemon serves) is timed on call patterns a dynamic
    batcher produces, every batch drawn before timing starts:
      fixed16: batch 16 every call;  alt8_16: 8, 16, 8, 16...;
      buckets: 1, 2, 4, 8, 16, 32 cycled;  odd: 3, 5, 7 ... 31 (seen before);
      two_threads_same: 2 threads at batch 16;  two_threads_mixed: 2 threads, 8 and 16.
    ms per call (threads: ms per call of each thread); plus img/s for the threaded ones.
    """
    import threading

    import numpy as np
    import onnxruntime as ort

    from edgeinfer.backends.onnxruntime.runner import OnnxRuntimeRunner

    path = work / "resnet50.onnx"
    if not path.exists():
        export_resnet50(path)
    rng = np.random.default_rng(0)
    odd = [3, 5, 7, 11, 13, 17, 19, 23, 29, 31]
    sizes = sorted(set(odd) | {1, 2, 4, 8, 16, 32})
    feeds = {b: {"input": rng.standard_normal((b, 3, 224, 224)).astype(np.float32)} for b in sizes}
    out = {}

    def timed(runner, batches) -> float:
        t0 = time.perf_counter()
        for b in batches:
            runner.infer(feeds[b])
        return (time.perf_counter() - t0) / len(batches) * 1e3

    def threaded(runner, per_thread: list[int], calls: int = 20) -> tuple[float, float]:
        times = [0.0] * len(per_thread)

        def go(k: int) -> None:
            times[k] = timed(runner, [per_thread[k]] * calls)

        t0 = time.perf_counter()
        ts = [threading.Thread(target=go, args=(k,)) for k in range(len(per_thread))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        wall = time.perf_counter() - t0
        return max(times), sum(per_thread) * calls / wall

    for algo in algos:
        o = ort.SessionOptions()
        o.log_severity_level = 3
        provider = ("CUDAExecutionProvider", {"cudnn_conv_algo_search": algo.upper()})
        t0 = time.perf_counter()
        sess = ort.InferenceSession(str(path), o, providers=[provider, "CPUExecutionProvider"])
        r = OnnxRuntimeRunner(sess, io_binding=False)
        res = {"first_sizes_ms": timed(r, sizes)}  # every size once: first-use cost
        timed(r, sizes)
        res.update({
            "fixed16_ms": timed(r, [16] * 20),
            "alt8_16_ms": timed(r, [8, 16] * 10),
            "buckets_ms": timed(r, [1, 2, 4, 8, 16, 32] * 4),
            "odd_ms": timed(r, odd * 2),
        })
        res["two_threads_same_ms"], res["two_threads_same_img_s"] = threaded(r, [16, 16])
        res["two_threads_mixed_ms"], res["two_threads_mixed_img_s"] = threaded(r, [8, 16])
        for b in (1, 8, 32):
            res[f"fixed{b}_ms"] = timed(r, [b] * 20)
        # The daemon's fix: sizes 8 and 16 on sessions of their own (session_per_batch_size).
        r.pin_batch_sizes({16: ort.InferenceSession(str(path), o, providers=[provider, "CPUExecutionProvider"])})
        timed(r, [16] * 3)
        res["alt8_16_pinned_ms"] = timed(r, [8, 16] * 10)
        res["two_threads_mixed_pinned_ms"], res["two_threads_mixed_pinned_img_s"] = threaded(r, [8, 16])
        r.deactivate()
        out[algo] = res
        row(f"ResNet-50 ORT CUDA calls, cudnn_conv_algo_search={algo.upper()}", "info",
            ", ".join(f"{k} {v:.1f}" for k, v in res.items()) + f" (session + all sizes {time.perf_counter() - t0:.0f}s)")
    return out


def gpu_targets(run: dict) -> list:
    from edgeinfer.bench.analysis import Target

    daemon = [p for p in run["points"] if p["target"] == "daemon"]
    targets = []
    for mode in ("unary", "stream"):
        levels = {p["concurrency"] for p in daemon if p["mode"] == mode}
        if not levels:  # not measured (or the model did not load)
            continue
        c = 32 if 32 in levels else max(levels)  # the target is stated at 32 clients
        how = "unary" if mode == "unary" else "InferStream"
        targets += [Target(f"{name}: daemon >= 85% of in-process ceiling ({how}, c={c}, GPU)", "daemon/ceiling",
                           name, mode, c, 0.85) for name in run["models"]]
    return targets


def bench_resnet(work: Path, media: Path, out_dir: Path, duration: float, concurrency: list[int], max_batch: int,
                 ceiling_batches: list[int], warmup: float = 2.0, variants: str = "", rounds: int = 1,
                 loop: str = "asyncio", ceiling_pools: Optional[list[int]] = None,
                 daemon_metrics: bool = False, modes: tuple[str, ...] = ("unary",), stream_window: int = 1,
                 interleave: bool = False, old_tree: Optional[Path] = None, old_variants: str = "") -> dict:
    """variants: comma list of
    WORKERS[xPROCESSES[s]][:ALGO[:BUCKETS[:NORM[:INSTANCES[:MERGE_US[:DELAY_US[:CALLS[:SYNC[:DECODE[:CLIENT_CPUS
    [:CLIENT_PROCS]]]]]]]]]]]
    (e.g. "16,8x2,16:heuristic:32",
    "16:::gpu", "5x3s"), one daemon run (and its ceiling) each. PROCESSES: [server] processes, with "s":
    [server] inference = "shared" (PROCESSES front-ends and one inference process); ALGO: [onnxruntime]
    cudnn_conv_algo_search; BUCKETS: [batching] buckets, sizes joined by "+" (e.g. 8+32); NORM: [models.input]
    normalize_on (cpu or gpu); INSTANCES: [onnxruntime] instances (concurrent runs; default 2); MERGE_US:
    [batching] merge_delay_us with preferred size 8 (shared mode: a free host slot waits for 8 rows);
    DELAY_US: [batching] max_queue_delay_us, the front-end's fill delay (default 2000); CALLS: [batching]
    shared_calls_in_flight (a front-end's calls in flight to the shared host; e.g. 16 with DELAY_US 0: one
    batching stage, the host's); SYNC: [server] cuda_sync (auto, spin, yield, block: how threads wait for
    the GPU). Runs sharing a ceiling share it whatever their SYNC: the first run's settings load it.
    DECODE: "full" or "reduced" ([models.input] reduced_decode; default: reduced), which gives the run a
    ceiling of its own. CLIENT_CPUS: N puts the load generator on the first N CPUs and the daemon and its
    ceiling on the others (bench/placement.py; empty: all anywhere); also a ceiling of its own.
    CLIENT_PROCS: N load generator processes, each client with its own connection (default: one process
    per client).
    modes: "unary" and/or "stream" (InferStream: each of the c clients keeps `stream_window` frames in
    flight on its own stream; with 1, c streams hold as many images in flight as c unary clients).
    old_tree, old_variants: more runs, "old-" + label, whose daemons run the code of another source tree
    (e.g. .oldtree from git archive): with --interleave, old code against new in one call.
    """
    from edgeinfer.bench.session import BenchSettings, RunSpec, run_benchmark
    from edgeinfer.config import BatchingConfig, InputConfig, ModelConfig, OnnxRuntimeConfig, PostprocessConfig

    t0 = time.perf_counter()
    onnx_path = export_resnet50(work / "resnet50.onnx")
    row("ResNet-50 exported", "ok", f"{onnx_path.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t0:.1f}s")
    cpus = os.cpu_count() or 8
    model = ModelConfig(
        name="resnet50", onnx=str(onnx_path), backends=["onnxruntime"], warmup_runs=3,
        input=InputConfig(color="rgb", resize="center-crop", size=[224, 224], scale=1 / 255,
                          mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        postprocess=PostprocessConfig(task="classification", top_k=5),
        onnxruntime=OnnxRuntimeConfig(providers=list(RESNET_PROVIDERS), instances=2),
        batching=BatchingConfig(max_batch=max_batch, max_queue_delay_us=2000),
    )
    specs = [RunSpec(label, config=config, placement=placement, clients=clients)
             for label, config, placement, clients in (variant_config(v, model, max_batch, work, daemon_metrics)
                                                       for v in (variants.split(",") if variants else [str(cpus)]))]
    if old_variants and old_tree is None:
        raise ValueError("--old-variants needs --old-tree")
    with contextlib.ExitStack() as stack:
        for v in filter(None, old_variants.split(",")):
            label, config, placement, clients = variant_config(v, model, max_batch, work, daemon_metrics)
            address, pid = stack.enter_context(daemon_from_tree(old_tree, config, loop, work / f"old-{len(specs)}",
                                                                placement.server))
            specs.append(RunSpec("old-" + label, config=config, address=address, pid=pid, placement=placement,
                                 clients=clients))
        results = run_benchmark(BenchSettings(
            runs=specs, images=media, concurrency=concurrency, modes=list(modes), stream_window=stream_window,
            duration_s=duration, warmup_s=warmup, payload="jpeg", trivial=False, echo=False,
            ceiling_batches=ceiling_batches, client_processes=min(32, max(concurrency)), work_dir=work,
            rounds=rounds, interleave=interleave, loop=loop, ceiling_pools=list(ceiling_pools or []),
            daemon_metrics=daemon_metrics, title="edgeinfer GPU benchmark: ResNet-50 on ONNX Runtime CUDA EP",
            command="scripts/gpu_bench.py", targets=gpu_targets))
    return report_resnet(results, out_dir, max_batch)


def variant_config(v: str, model, max_batch: int, work: Path, daemon_metrics: bool):
    """(label, Config, Placement, ClientLayout or None) of one --variants entry (see bench_resnet)."""
    from edgeinfer.bench.loadgen import ClientLayout
    from edgeinfer.bench.placement import ANYWHERE, Placement
    from edgeinfer.config import Config, ServerConfig

    (workers_text, algo, buckets, norm, instances, merge_us, fe_delay_us, calls, sync, decode, client_cpus,
     client_procs) = (v.split(":") + [""] * 11)[:12]
    if decode not in ("", "full", "reduced"):
        raise ValueError(f"variant {v!r}: DECODE is full or reduced, not {decode!r}")
    workers_text, _, procs_text = workers_text.partition("x")
    shared = procs_text.endswith("s")
    workers, processes = int(workers_text), int(procs_text.rstrip("s") or 1)
    m = dataclasses.replace(
        model,
        input=dataclasses.replace(model.input, normalize_on=norm or "cpu",
                                  reduced_decode=model.input.reduced_decode if not decode else decode == "reduced"),
        onnxruntime=dataclasses.replace(model.onnxruntime, cudnn_conv_algo_search=algo or "auto",
                                        instances=int(instances or model.onnxruntime.instances)),
        batching=dataclasses.replace(model.batching, buckets=[int(b) for b in buckets.split("+") if b],
                                     merge_delay_us=int(merge_us or 0),
                                     max_queue_delay_us=int(fe_delay_us or model.batching.max_queue_delay_us),
                                     preferred_batch_sizes=[8] if merge_us else [],
                                     shared_calls_in_flight=int(calls or 0)))
    config = Config(server=ServerConfig(workers=workers, stream_window=16, processes=processes,
                                        inference="shared" if shared else "per-process",
                                        cuda_sync=sync or "auto"), models=[m],
                    source="gpu_bench.py")
    # --daemon-metrics: endpoints on 9400.. (front-ends) and 9400 + processes (a shared inference
    # process), for scripts/watch_stages.py; off, benchmarks never fight over the port.
    config.metrics.enabled = daemon_metrics
    config.cache.dir = str(work / "cache")
    label = (f"ort-cuda-b{max_batch}-w{workers}" + (f"-p{processes}" if processes > 1 else "")
             + ("-shared" if shared else "")
             + f"-{algo or 'auto'}"
             + (f"-buckets{buckets}" if buckets else "")
             + (f"-norm{norm}" if norm else "")
             + (f"-i{instances}" if instances else "")
             + (f"-merge{merge_us}us" if merge_us else "")
             + (f"-delay{fe_delay_us}us" if fe_delay_us else "")
             + (f"-calls{calls}" if calls else "")
             + (f"-sync{sync}" if sync else "")
             + (f"-decode{decode}" if decode else "")
             + (f"-clientcpus{client_cpus}" if client_cpus else "")
             + (f"-clientprocs{client_procs}" if client_procs else ""))
    return (label, config, Placement.clients_first(int(client_cpus)) if client_cpus else ANYWHERE,
            ClientLayout(int(client_procs), "slot") if client_procs else None)


@contextlib.contextmanager
def daemon_from_tree(tree: Path, config, loop: str, work: Path, cpus: frozenset = frozenset()):
    """A daemon for `config` running another source tree's code (scripts/device/serve_from_tree.py), on
    `cpus` (empty: anywhere); yields (address, pid) once its models have loaded, stops it on exit."""
    from edgeinfer.bench.placement import started_on

    work.mkdir(parents=True, exist_ok=True)
    pickled = work / "config.pickle"
    pickled.write_bytes(pickle.dumps(config))
    tree = Path(tree).resolve()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tree / "daemon"), str(tree / "clients")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    with started_on(cpus):
        proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "device" / "serve_from_tree.py"),
                                 str(pickled), loop], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline().split()  # "PORT PID" once loaded; nothing if it failed
        if len(line) != 2:
            raise RuntimeError(f"the daemon from {tree} did not start (exit {proc.wait(30)})")
        row(f"daemon from {tree}", "info", f"port {line[0]}, pid {line[1]}")
        yield f"127.0.0.1:{line[0]}", int(line[1])
    finally:
        proc.terminate()
        try:
            proc.wait(config.server.grace_period_s + 30)
        except subprocess.TimeoutExpired:
            proc.kill()


def report_resnet(results: dict, out_dir: Path, max_batch: int) -> dict:
    """Write the report, print the summary and a row per point and target."""
    from edgeinfer.bench.cli import summary_text
    from edgeinfer.bench.report import interval_text, write_report

    paths = write_report(results, out_dir, "gpu-resnet50")
    print(summary_text(results), flush=True)
    for run in results["runs"]:
        for d in (p for p in run["points"] if p["target"] == "daemon"):
            row(f"ResNet-50 daemon {run['label']} {d['mode']} c={d['concurrency']} (gRPC, JPEG, batching max {max_batch})",
                "info", f"{d['throughput']:.0f} img/s, P50 {d['p50_ms']:.1f} ms, P99 {d['p99_ms']:.1f} ms, "
                f"errors {d['errors']}, served on {run['models']['resnet50'].get('served_on')}; daemon means "
                + ", ".join(f"{k} {v:.0f}" for k, v in (d.get("server_timing_us") or {}).items()))
        for p in (p for p in run["points"] if p["target"] == "ceiling"):
            row(f"ResNet-50 ceiling {run['label']} c={p['concurrency']} ({p['mode']})", "info",
                f"{p['throughput']:.0f} img/s, P50 {p['p50_ms']:.1f} ms")
    for t in results["targets"]:
        row(f"{t['run']}: {t['title']}", "PASS" if t["passed"] else ("MISS" if t["passed"] is False else "n/a"),
            f"ratio {t['value']:.3f}" if t["value"] is not None else "")
    for t in results.get("median_targets", []):
        row(f"{t['run']}: {t['title']}, median of {t['rounds']} rounds",
            "PASS" if t["passed"] else ("MISS" if t["passed"] is False else "n/a"),
            f"median {t['median']:.3f}, interval {interval_text(t)}; rounds "
            + ", ".join(f"{v:.3f}" for v in t["values"])
            if t["median"] is not None else "")
    return {"results_json": str(paths["json"]), "targets": results["targets"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--assets", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-bench-out")))
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--concurrency", default="32", help="client concurrency levels, e.g. 32,128")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--ceiling-batch", default="1,8,32")
    ap.add_argument("--warmup", type=float, default=2.0,
                    help="unmeasured seconds per point (a batching daemon meets each new batch size once)")
    ap.add_argument("--variants", default="",
                    help="daemon runs, WORKERS[:ALGO] each, e.g. 16:exhaustive,16:heuristic")
    ap.add_argument("--algos", default="exhaustive,heuristic,default",
                    help="cudnn_conv_algo_search modes the diagnose step compares")
    ap.add_argument("--skip", default="", help="comma list of kernel,iobinding,diagnose,resnet")
    ap.add_argument("--rounds", type=int, default=1, help="repeat every variant, round by round; median verdict")
    ap.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=None,
                    help="every variant's daemon and the ceiling stay loaded and take one slice each per round, "
                         "back to back (--duration/--warmup per slice): an A/B in one call; the default with "
                         "--rounds > 1 (--no-interleave: whole runs in turn)")
    ap.add_argument("--old-tree", type=Path, default=None,
                    help="a source tree (git archive REV daemon clients scripts) whose daemons --old-variants run")
    ap.add_argument("--old-variants", default="", help="variants, as --variants, served by --old-tree's code")
    ap.add_argument("--loop", default="asyncio", help="event loop of daemon and clients: asyncio, uvloop, auto")
    ap.add_argument("--ceiling-pools", default="",
                    help="batched ceiling: preprocessing pool sizes to try, e.g. 5,8,16 (default: each variant's workers and one per core)")
    ap.add_argument("--modes", default="unary", help="daemon client modes: unary, stream or unary,stream")
    ap.add_argument("--stream-window", type=int, default=1, help="stream mode: frames in flight per stream")
    ap.add_argument("--daemon-metrics", action="store_true",
                    help="leave the daemon's metrics endpoints on (127.0.0.1:9400 + process index; see "
                         "scripts/watch_stages.py)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/edgeinfer-gpu-bench")
    work.mkdir(parents=True, exist_ok=True)
    import torch  # noqa: F401 - loads the CUDA/cuDNN libraries onnxruntime-gpu needs, in this process

    cuda_library_path()
    import onnxruntime as ort

    from edgeinfer import platform as plat
    from edgeinfer.bench.cli import interleaved

    info = plat.detect()
    row("device", ", ".join(f"{g.name} (cc {g.compute_capability})" for g in info.gpus) or "NO GPU",
        f"driver {info.nvidia_driver}, CUDA runtime {info.cuda_runtime}, onnxruntime {ort.__version__} "
        f"{ort.get_available_providers()}")
    skip = set(filter(None, args.skip.split(",")))
    summary = {"device": [g.name for g in info.gpus]}
    steps = [("kernel", lambda: check_kernel(args.assets / "media")),
             ("iobinding", lambda: check_iobinding(args.assets / "models" / "efficientnet-lite0.onnx",
                                                   args.assets / "media")),
             ("diagnose", lambda: diagnose_runner(work, args.algos.split(","))),
             ("resnet", lambda: bench_resnet(work, args.assets / "media", args.out, args.duration,
                                             [int(c) for c in args.concurrency.split(",")],
                                             args.max_batch, [int(b) for b in args.ceiling_batch.split(",")],
                                             args.warmup, args.variants, args.rounds, args.loop,
                                             [int(x) for x in args.ceiling_pools.split(",") if x],
                                             args.daemon_metrics, tuple(args.modes.split(",")),
                                             args.stream_window, interleaved(args), args.old_tree,
                                             args.old_variants))]
    failed = False
    for name, step in steps:
        if name in skip:
            continue
        try:
            summary[name] = step()
        except Exception as exc:  # noqa: BLE001 - report and go on to the next step
            traceback.print_exc()
            row(name, "ERROR", f"{type(exc).__name__}: {exc}")
            failed = True
    (args.out / "gpu-checks.json").write_text(json.dumps(summary, indent=1, default=str))
    print("\n| check | result | detail |\n| --- | --- | --- |")
    for check_name, result, detail in ROWS:
        print(f"| {check_name} | {result} | {detail} |")
    return 1 if failed or any(r[1] in ("FAIL", "ERROR") for r in ROWS) else 0


if __name__ == "__main__":
    sys.exit(main())
