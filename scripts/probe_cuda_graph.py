#!/usr/bin/env python3
"""What CUDA graphs change for ONNX Runtime's CUDA EP on ResNet-50: run it on the GPU machine.

    python3 scripts/probe_cuda_graph.py --out DIR [--seconds 3]

Questions it answers, every number measured in this one run:
 - ms per call at batch 1, 4, 8, 16 from one thread: plain session.run (host
   arrays), IO binding on fixed device buffers, and a captured CUDA graph
   (`enable_cuda_graph`) replayed on those buffers;
 - img/s with T threads each running batch B at once (the daemon's host runs
   ~2 slots of 5-10 rows; the in-process ceiling 8 threads of 8): one shared
   session without graphs (how the runner works today) against one graph
   session per thread (a graph replay is not safe from two threads at once);
 - whether one session can hold a graph per batch size (`gpu_graph_id` run option).
Writes DIR/probe_cuda_graph.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from gpu_bench import cuda_library_path, export_resnet50

    cuda_library_path()
    import onnxruntime as ort

    ort.preload_dlls()
    model = args.out / "resnet50.onnx"
    if not model.exists():
        export_resnet50(model)
    result: dict = {"onnxruntime": ort.__version__}

    def session(graph: bool):
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        prov = ("CUDAExecutionProvider", {"enable_cuda_graph": "1"} if graph else {})
        return ort.InferenceSession(str(model), sess_options=opts, providers=[prov])

    class Bound:
        """Fixed device input/output for one session and batch size."""

        def __init__(self, sess, b: int, graph_id: int | None = None):
            self.sess, self.b = sess, b
            self.x = ort.OrtValue.ortvalue_from_shape_and_type([b, 3, 224, 224], np.float32, "cuda", 0)
            self.y = ort.OrtValue.ortvalue_from_shape_and_type([b, 1000], np.float32, "cuda", 0)
            self.io = sess.io_binding()
            self.io.bind_ortvalue_input("input", self.x)
            self.io.bind_ortvalue_output("logits", self.y)
            self.ro = ort.RunOptions()
            if graph_id is not None:
                self.ro.add_run_config_entry("gpu_graph_id", str(graph_id))
            self.host = np.random.default_rng(b).standard_normal((b, 3, 224, 224)).astype(np.float32)

        def call(self) -> np.ndarray:
            self.x.update_inplace(self.host)
            self.sess.run_with_iobinding(self.io, self.ro)
            return self.y.numpy()

    def per_call(fn, seconds: float) -> float:
        for _ in range(5):
            fn()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn()
            n += 1
        return (time.perf_counter() - t0) / n * 1e3

    # 1. one thread, per batch size
    single = {}
    plain = session(False)
    for b in (1, 4, 8, 16):
        host = np.random.default_rng(b).standard_normal((b, 3, 224, 224)).astype(np.float32)
        row = {"plain_run_ms": per_call(lambda: plain.run(None, {"input": host}), args.seconds)}
        fixed = session(False)  # one shape per session, as session_per_batch_size does
        row["iobinding_ms"] = per_call(Bound(fixed, b).call, args.seconds)
        g = session(True)
        bound = Bound(g, b)
        ref = Bound(fixed, b)
        ref.host = bound.host
        row["graph_ms"] = per_call(bound.call, args.seconds)
        row["graph_max_abs_diff"] = float(np.max(np.abs(bound.call() - ref.call())))
        single[b] = row
        print(f"[probe] b={b}: {row}", flush=True)
    result["single_thread"] = single

    # 2. threads at once
    def throughput(workers: list, seconds: float) -> float:
        counts = [0] * len(workers)
        stop = time.perf_counter() + seconds

        def go(k: int) -> None:
            w = workers[k]
            for _ in range(3):
                w()
            n = 0
            while time.perf_counter() < stop:
                w()
                n += 1
            counts[k] = n

        ts = [threading.Thread(target=go, args=(k,)) for k in range(len(workers))]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return sum(counts) / (time.perf_counter() - t0)

    conc = {}
    for threads, b in ((1, 8), (2, 8), (2, 16), (4, 8), (8, 8)):
        shared = session(False)
        host = np.random.default_rng(0).standard_normal((b, 3, 224, 224)).astype(np.float32)
        plain_rate = throughput([lambda: shared.run(None, {"input": host})] * threads, args.seconds) * b
        graphs = [Bound(session(True), b).call for _ in range(threads)]
        for call in graphs:  # capture one at a time: a capture fails while another stream captures
            for _ in range(4):
                call()
        graph_rate = throughput(graphs, args.seconds) * b
        conc[f"{threads}x{b}"] = {"plain_img_s": round(plain_rate), "graph_img_s": round(graph_rate)}
        print(f"[probe] {threads} threads x batch {b}: {conc[f'{threads}x{b}']}", flush=True)
    result["threads"] = conc

    # 3. one session, a graph per batch size
    try:
        g = session(True)
        bounds = {b: Bound(g, b, graph_id=i + 1) for i, b in enumerate((1, 8, 16))}
        multi = {b: per_call(bd.call, 1.0) for b, bd in bounds.items()}
        # interleaved: every size in turn, each on its own graph
        order = [bounds[1], bounds[8], bounds[16]]
        multi["interleaved_ms"] = per_call(lambda: [bd.call() for bd in order], args.seconds) / 3
        result["multi_graph"] = multi
        print(f"[probe] one session, graph ids per size: {multi}", flush=True)
    except Exception as exc:  # noqa: BLE001 - report what ORT says
        result["multi_graph"] = f"failed: {exc}"
        print(f"[probe] multi-graph failed: {exc}", flush=True)

    (args.out / "probe_cuda_graph.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
