#!/usr/bin/env python3
"""On the GPU machine: the whole daemon, TensorRT first, falling back to ONNX Runtime CUDA.

Starts `edgeinfer serve` (a real subprocess) on a config whose models list
backends ["tensorrt", "onnxruntime"]. With TensorRT-RTX on Hopper the engine
builds and is cached, the runtime refuses it, and the model must fall back to
ONNX Runtime's CUDA EP and answer the same labels as the CPU. Prints a table;
exit status 0 only when every check passed. Nothing is hard-coded: every line
is what the daemon and the CPU reference returned on this machine.

    PYTHONPATH=/tmp/site:daemon:clients python3 scripts/gpu_check_daemon.py --assets .gpu/assets
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "daemon"), str(ROOT / "clients")]

rows: list[tuple[str, str, str]] = []


def row(check: str, ok: bool, detail: str) -> bool:
    rows.append((check, "PASS" if ok else "FAIL", detail))
    print(f"[{'PASS' if ok else 'FAIL'}] {check}: {detail}", flush=True)
    return ok


CONFIG = """
[server]
listen = "127.0.0.1:{port}"
workers = 4
[metrics]
enabled = false
[cache]
dir = "{cache}"

[[models]]
name = "imagenet"
onnx = "{assets}/models/efficientnet-lite0.onnx"
backends = ["tensorrt", "onnxruntime"]
[models.input]
resize = "center-crop"
size = [224, 224]
mean = [127.0, 127.0, 127.0]
std = [128.0, 128.0, 128.0]
[models.postprocess]
task = "classification"
labels = "{assets}/models/imagenet-labels.txt"
top_k = 5
[models.tensorrt]
rtx_compute_capability = "sm86"
instances = 1
[[models.tensorrt.profiles]]
min = {{ input = [1, 3, 224, 224] }}
opt = {{ input = [8, 3, 224, 224] }}
max = {{ input = [32, 3, 224, 224] }}

[[models]]
name = "faces"
onnx = "{assets}/models/centerface.onnx"
backends = ["onnxruntime"]
[models.input]
resize = "letterbox"
size = [640, 480]
pad_value = 0
[models.postprocess]
task = "centerface"
nms_iou_threshold = 0.3
"""


def cpu_top5(config_path: Path, photos: list[Path]) -> dict[str, list[int]]:
    """The same model and preprocessing on ONNX Runtime's CPU EP, in this process."""
    import onnxruntime as ort

    from edgeinfer.config import load_config
    from edgeinfer.pipeline.preprocess import Preprocessor

    m = load_config(config_path).model("imagenet")
    session = ort.InferenceSession(m.onnx, providers=["CPUExecutionProvider"])
    pre = Preprocessor(m.input)
    out = {}
    for p in photos:
        tensor, _ = pre(pre.decode(p.read_bytes()))
        logits = session.run(None, {"input": tensor[None]})[0][0]
        out[p.name] = [int(i) for i in (-logits).argsort()[:5]]
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--assets", type=Path, default=ROOT / "assets")
    args = ap.parse_args()
    assets = args.assets.resolve()
    from edgeinfer import platform as plat
    from edgeinfer_client import Client

    info = plat.detect()
    gpu = info.gpus[0].name if info.gpus else "none"
    row("platform", bool(info.gpus), f"{gpu}, driver {info.nvidia_driver}, CUDA {info.cuda_driver}, "
        f"TensorRT {info.tensorrt or '-'}, TensorRT-RTX {info.tensorrt_rtx or '-'}, ORT {info.onnxruntime} "
        f"{info.onnxruntime_providers}")
    tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp / "gpu.toml"
    cfg.write_text(CONFIG.format(port=port, cache=tmp / "cache", assets=assets))
    log = open(tmp / "serve.log", "w")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.environ.get("PYTHONPATH", ""), str(ROOT / "daemon"),
                                                       str(ROOT / "clients")]))
    proc = subprocess.Popen([sys.executable, "-m", "edgeinfer.cli", "serve", "--config", str(cfg)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        with Client(f"127.0.0.1:{port}", timeout=60) as c:
            t0 = time.monotonic()
            c.wait_ready("", timeout=300)
            row("daemon ready", True, f"{time.monotonic() - t0:.1f}s after start")
            m = c.get_model("imagenet")
            trt = [a for a in m.attempts if a.backend == "tensorrt"]
            row("tensorrt engine built, then refused on this GPU",
                bool(trt) and trt[0].outcome in ("skipped", "failed") and "not installed" not in trt[0].reason,
                f"{trt[0].outcome}: {trt[0].reason[:300]}" if trt else "no tensorrt attempt recorded")
            row("imagenet fell back to onnxruntime on CUDA", m.backend == "onnxruntime" and m.device.startswith("cuda"),
                f"backend={m.backend} device={m.device} state={m.state}")
            photos = [assets / "media" / n for n in ("chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png")]
            ref = cpu_top5(cfg, photos)
            for p in photos:
                got = [cl.index for cl in c.infer("imagenet", p, top_k=5).classes]
                row(f"labels match CPU: {p.name}", got[0] == ref[p.name][0] and set(got[:3]) == set(ref[p.name][:3]),
                    f"gpu top5 {got} / cpu top5 {ref[p.name]}")
            f = c.get_model("faces")
            faces = c.infer("faces", assets / "media" / "astronaut.png").detections
            row("faces on CUDA EP: one face on astronaut.png", f.device.startswith("cuda") and len(faces) == 1,
                f"device={f.device} faces={len(faces)} score={faces[0].score:.3f}" if faces else f"device={f.device} none")
        cache_entries = list((tmp / "cache").rglob("*.engine"))
        manifests = list((tmp / "cache").rglob("*.json"))
        row("engine + manifest in the cache", bool(cache_entries) and bool(manifests),
            f"{[e.name[:16] for e in cache_entries]} {[m.name[:16] for m in manifests]}")
    except Exception as exc:  # noqa: BLE001 - report, then the table
        row("daemon check", False, f"{type(exc).__name__}: {exc}")
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        print("---- daemon log (tail) ----")
        print("\n".join((tmp / "serve.log").read_text().splitlines()[-25:]))
    print("\n| check | result | detail |\n| --- | --- | --- |")
    for check, result, detail in rows:
        print(f"| {check} | {result} | {detail[:220]} |")
    return 0 if all(r[1] == "PASS" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
