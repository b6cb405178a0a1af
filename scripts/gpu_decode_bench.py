"""On a GPU host: ResNet-50 raw engine rates and the daemon end to end with CPU vs GPU decode, one run.

    python3 scripts/gpu_decode_bench.py --media assets/media --out OUT [--rounds 3 --duration 5]

1. Exports ResNet-50 from torchvision (random weights: no network on the GPU machine; speed does not
   depend on the weights) and its fp16 copy (the daemon's own converter, fp32 inputs and outputs).
2. The raw engine: ONNX Runtime CUDA EP with IO binding, the input already on the device, fp32 and
   fp16, batch 32 (img/s) and batch 1 (P50 of one call).
3. The daemon serving the fp16 model, `edgeinfer bench --variants decode` style (edgeinfer_bench/variants.py):
   decode = cpu and decode = gpu, every daemon loaded throughout, interleaved rounds, 32 client processes
   sending the photos as JPEGs (ImageNet-size), and one client for the batch-1 latency.
4. Prints and reports daemon / raw fp16 engine at batch 32 (goal 0.75) and the batch-1 P50 gap (goal 1.5 ms).

Writes OUT/NAME.md, OUT/NAME.json and three plots (edgeinfer_bench/variants.py's report).
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import statistics
import sys
import time
from pathlib import Path


def cuda_library_path() -> None:
    """The pip-installed CUDA/cuDNN/nvJPEG libraries on LD_LIBRARY_PATH, for the daemon's fresh interpreters."""
    try:
        import nvidia  # namespace package of the nvidia-* wheels
    except ImportError:
        return
    dirs = sorted({d for base in nvidia.__path__ for d in glob.glob(os.path.join(base, "*", "lib"))})
    old = os.environ.get("LD_LIBRARY_PATH", "")
    os.environ["LD_LIBRARY_PATH"] = ":".join(dirs + ([old] if old else []))


def export_resnet50(path: Path) -> Path:
    import torch
    import torchvision

    model = torchvision.models.resnet50(weights=None).eval()
    x = torch.randn(2, 3, 224, 224)
    try:
        torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"], opset_version=17,
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, dynamo=False)
    except Exception as exc:  # noqa: BLE001 - newer torch: the dynamo exporter
        print(f"[gpu_decode_bench] TorchScript export failed ({exc}); the dynamo exporter", flush=True)
        torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"], opset_version=17,
                          dynamic_shapes={"x": {0: torch.export.Dim("N", min=1, max=1024)}}, dynamo=True)
    return path


def raw_engine(path: Path, batch: int, seconds: float = 4.0) -> dict:
    """ORT CUDA EP, IO binding, input and output on the device: img/s and per-call P50 (ms)."""
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=[("CUDAExecutionProvider", {"device_id": 0}),
                                                      "CPUExecutionProvider"])
    assert sess.get_providers()[0] == "CUDAExecutionProvider", sess.get_providers()
    x = ort.OrtValue.ortvalue_from_numpy(np.random.default_rng(0).standard_normal((batch, 3, 224, 224))
                                         .astype(np.float32), "cuda", 0)
    binding = sess.io_binding()
    binding.bind_ortvalue_input("input", x)
    binding.bind_output("logits", "cuda", 0)
    for _ in range(20):
        sess.run_with_iobinding(binding)
    binding.synchronize_outputs()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        sess.run_with_iobinding(binding)
        binding.synchronize_outputs()
        times.append(time.perf_counter() - t0)
    total = sum(times)
    return {"batch": batch, "calls": len(times), "img_per_s": round(batch * len(times) / total, 1),
            "p50_ms": round(statistics.median(times) * 1e3, 3)}


def daemon_config(onnx_path: Path, media: Path, work: Path, processes: int, workers: int, max_batch: int,
                  inference: str = "per-process"):
    from edgeinfer.config import (BatchingConfig, CalibrationConfig, Config, InputConfig, ModelConfig,
                                  OnnxRuntimeConfig, PostprocessConfig, ServerConfig)

    model = ModelConfig(
        name="resnet50", onnx=str(onnx_path), backends=["onnxruntime"], precision=["fp16"], warmup_runs=3,
        input=InputConfig(color="rgb", resize="center-crop", size=[224, 224], scale=1 / 255,
                          mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        postprocess=PostprocessConfig(task="classification", top_k=5),
        # Random weights: the gate's top-1 agreement means nothing here; fp16 is gated on real models elsewhere.
        calibration=CalibrationConfig(images=str(media), max_images=8, min_top1_agreement=0.0),
        onnxruntime=OnnxRuntimeConfig(providers=["CUDAExecutionProvider", "CPUExecutionProvider"], instances=2),
        batching=BatchingConfig(max_batch=max_batch, max_queue_delay_us=2000,
                                buckets=[b for b in (1, 2, 4, 8, 16, 32) if b <= max_batch]),
    )
    cfg = Config(server=ServerConfig(workers=workers, processes=processes, inference=inference,
                                     max_message_bytes=64 << 20),
                 models=[model], source="gpu_decode_bench.py")
    cfg.metrics.enabled = False
    cfg.cache.dir = str(work / "cache")
    return cfg


def transport_bound(args, processes: int) -> dict:
    """The same JPEG requests against bare grpc.aio echo processes sharing one port: what gRPC alone
    carries on this host with `processes` front-ends (edgeinfer_bench/echo.py)."""
    from edgeinfer_bench.echo import UNARY, EchoServer
    from edgeinfer_bench.loadgen import LoadSpec, run_load
    from edgeinfer_bench.workload import find_images, image_payload

    payload = image_payload("resnet50", find_images(args.media), "jpeg")
    with EchoServer(processes=processes) as echo:
        echo.respond_with(200)  # about a top-5 InferResponse
        spec = LoadSpec(echo.address, UNARY, "unary", payload.requests, concurrency=args.clients,
                        duration_s=args.duration, warmup_s=args.warmup, processes=args.clients,
                        label=f"echo x{processes}")
        res = run_load(spec, progress=None)
    return {"processes": processes, "req_per_s": round(res.summary.throughput, 1), "errors": res.summary.errors}


def _layout(layout: str) -> tuple[int, str]:
    """"4:shared" -> (4, "shared"); "4" -> (4, "per-process")."""
    count, _, inference = layout.partition(":")
    return int(count), inference or "per-process"


def _layout_label(layout: str) -> str:
    processes, inference = _layout(layout)
    return f"{processes} process(es), {inference} inference"


def _cores(variant: dict) -> str:
    """The daemon's cores and the steal at the saturating point, median round."""
    cpu = [c for c in (variant.get("throughput") or {}).get("cpu", []) if c]
    if not cpu:
        return "-"
    mid = sorted(cpu, key=lambda c: c.get("server_cores") or 0)[len(cpu) // 2]
    return f"{mid.get('server_cores')} cores, steal {mid.get('steal_pct')}%"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--media", type=Path, default=Path("assets/media"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/gpu-decode-bench"))
    ap.add_argument("--name", default="gpu-resnet50-decode")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--processes", default="1", help="[server] processes, each N (per-process inference) or "
                    "N:shared (one shared inference process, which then decodes for all); a list, e.g. "
                    "1,4,4:shared, measures each (the first is the report's plots and main tables)")
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--skip-raw", action="store_true")
    ap.add_argument("--echo", action="store_true", help="also measure the bare transport: echo processes "
                    "(as many as the largest --processes) answering the same JPEG requests")
    args = ap.parse_args()
    cuda_library_path()
    import torch  # noqa: F401 - loads the CUDA/cuDNN libraries onnxruntime-gpu needs in this process

    from edgeinfer.model.precision.fp16 import Fp16Settings, convert_fp16
    from edgeinfer_bench.variants import VariantSettings, run_variants, write_report

    args.work.mkdir(parents=True, exist_ok=True)
    fp32 = export_resnet50(args.work / "resnet50.onnx")
    fp16 = args.work / "resnet50-fp16.onnx"
    convert_fp16(fp32, fp16, Fp16Settings())
    engine = {}
    if not args.skip_raw:
        for label, path in (("fp32", fp32), ("fp16", fp16)):
            for batch in (32, 1):
                engine[f"{label} b{batch}"] = r = raw_engine(path, batch)
                print(f"[raw] {label} batch {batch}: {r['img_per_s']:,.0f} img/s, P50 {r['p50_ms']:.3f} ms", flush=True)
    runs = []
    for layout in args.processes.split(","):
        processes, inference = _layout(layout)
        cfg = daemon_config(fp32, args.media, args.work, processes, args.workers, args.max_batch, inference)
        settings = VariantSettings(config=cfg, model="resnet50", axis="decode", values=["cpu", "gpu"],
                                   images=args.media, saturating=args.clients, duration_s=args.duration,
                                   warmup_s=args.warmup, rounds=args.rounds, client_processes=args.clients,
                                   title=f"ResNet-50 fp16 on one GPU: JPEG decode on the CPU vs the GPU "
                                         f"({processes} process(es), {inference} inference, {args.workers} workers each)",
                                   command="scripts/gpu_decode_bench.py " + " ".join(sys.argv[1:]),
                                   work_dir=args.work / f"variants-{layout.replace(':', '-')}")
        runs.append((layout, run_variants(settings)))
    results = runs[0][1]
    results["engine"] = engine
    lines = ["Raw engine: ONNX Runtime CUDA EP, IO binding, input already on the device, same run, same GPU. "
             "ResNet-50 from torchvision with random weights (no network there; speed does not depend on them).", "",
             "| engine | batch | img/s | P50 ms per call |", "| --- | --- | --- | --- |"]
    for k, r in engine.items():
        lines.append(f"| {k.split()[0]} | {r['batch']} | {r['img_per_s']:,.0f} | {r['p50_ms']:.3f} |")
    ratios = []
    raw16 = engine.get("fp16 b32", {}).get("img_per_s")
    raw16_b1 = engine.get("fp16 b1", {}).get("p50_ms")
    lines += ["", "| daemon (fp16) | img/s at %d clients | / raw fp16 engine b32 (goal 0.75) | P50 ms at 1 client | "
              "- raw fp16 b1 P50 (goal 1.5 ms) | host CPU of the daemon |" % args.clients,
              "| --- | --- | --- | --- | --- | --- |"]
    for processes, res in runs:
        for v in res["variants"]:
            thr = (v.get("throughput") or {}).get("throughput")
            p50 = (v.get("latency") or {}).get("p50_ms")
            ratio = round(thr / raw16, 3) if thr and raw16 else None
            gap = round(p50 - raw16_b1, 3) if p50 and raw16_b1 else None
            ratios.append({"processes": processes, "decode": v["variant"], "img_per_s": thr, "ratio": ratio,
                           "p50_ms": p50, "p50_gap_ms": gap, "reason": v.get("reason")})
            found = re.search(r"decode on [^;]+", v.get("reason") or "")
            decode = found.group(0) if found else "decode on cpu"
            lines.append(f"| {_layout_label(processes)}, {decode} | {thr or 0:,.0f} | {ratio} | {p50 or 0:.2f} | {gap} | "
                         f"{_cores(v)} |")
            print(f"[ratio] processes={processes} decode={v['variant']}: {thr or 0:,.0f} img/s = {ratio} of the raw "
                  f"fp16 engine (goal 0.75); batch-1 P50 {p50} ms, {gap} ms above the raw call (goal 1.5)", flush=True)
    if args.echo:
        echo = transport_bound(args, max(_layout(layout)[0] for layout, _ in runs))
        best = max((r["img_per_s"] or 0 for r in ratios), default=0)
        lines += ["", f"Bare transport, same run: {echo['processes']} echo process(es) on one port (grpc.aio, no work, "
                      f"the same JPEG requests from {args.clients} client processes): {echo['req_per_s']:,.0f} req/s; "
                      f"the best daemon row is {best / echo['req_per_s']:.2f} of it." if echo["req_per_s"] else
                      "Bare transport: the echo answered nothing."]
        results["transport_bound"] = echo
        print(f"[echo] {echo['processes']} process(es): {echo['req_per_s']:,.0f} req/s", flush=True)
    results["ratios"] = ratios
    results["other_runs"] = [r for _, r in runs[1:]]
    results["sections"] = [{"title": "Against the raw engine (same run)", "lines": lines}]
    paths = write_report(results, args.out, args.name)
    for kind, path in paths.items():
        print(f"{kind:>10}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
