#!/usr/bin/env python3
"""Check edgeinfer's TensorRT backend on a real GPU, through edgeinfer's own code.

Meant for the lent H100/H200 with TensorRT-RTX installed in /tmp/site (see
../shared/device/README.md). It builds EfficientNet-Lite0 with a dynamic-batch profile
(1/8/32) through RunnerFromOnnx and the engine cache, then:

1. first call:  the engine is built and stored with its manifest; on Hopper the runtime
                refuses to deserialize it and the loader raises BackendUnavailable;
2. second call: the engine comes from the cache (no build) and the refusal is reported
                again without a pointless rebuild;
3. `edgeinfer build` path (EngineBytesFromOnnx): a cache hit;
4. cache verify: the entry's sha256/size match its manifest;
5. a truncated ONNX and an ONNX with an op TensorRT cannot import: BackendLoadError
   (the second with TensorRT's parser errors, naming the node);
6. cuda-python pinned/device buffers: a round trip.

Prints a summary table at the end. Nothing here is a hard-coded result: every line is
what the code returned on this machine.

    PYTHONPATH=/tmp/site:daemon:clients python3 scripts/gpu_check_trt.py --onnx assets/models/efficientnet-lite0.onnx
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "daemon"), str(ROOT / "clients")]

from edgeinfer import platform as plat  # noqa: E402
from edgeinfer.backends import LoadRequest  # noqa: E402
from edgeinfer.config import parse_config  # noqa: E402
from edgeinfer.errors import BackendLoadError, BackendUnavailable  # noqa: E402

rows: list[tuple[str, str, str]] = []


def row(check: str, ok: bool, detail: str) -> None:
    rows.append((check, "PASS" if ok else "FAIL", detail))
    print(f"[{'PASS' if ok else 'FAIL'}] {check}: {detail}", flush=True)


def model_config(onnx: Path, target: str, instances: int):
    cfg = parse_config({"models": [{
        "name": "effnet", "onnx": str(onnx), "precision": ["fp32"],
        "input": {"size": [224, 224]},
        "batching": {"max_batch": 32},
        "tensorrt": {"rtx_compute_capability": target, "instances": instances, "workspace_mb": 2048,
                     "profiles": [{"min": {"input": [1, 3, 224, 224]}, "opt": {"input": [8, 3, 224, 224]},
                                   "max": {"input": [32, 3, 224, 224]}}]},
    }]}, source="gpu_check_trt", base_dir=ROOT, check_files=True)
    return cfg.models[0]


def attempt(label: str, request, messages: list[str]):
    """Call RunnerFromOnnx once; returns (runner or None, exception or None, seconds)."""
    from edgeinfer.backends.tensorrt.loader import RunnerFromOnnx

    messages.clear()
    start = time.monotonic()
    try:
        runner = RunnerFromOnnx(request)()
        return runner, None, time.monotonic() - start
    except (BackendUnavailable, BackendLoadError) as exc:
        return None, exc, time.monotonic() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--onnx", type=Path, default=ROOT / "assets/models/efficientnet-lite0.onnx")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/edgeinfer-gpu-check/cache"))
    ap.add_argument("--target", default="sm86", help="TensorRT-RTX compute capability (sm86, sm89, current)")
    ap.add_argument("--instances", type=int, default=2)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")

    info = plat.detect()
    print("platform:", json.dumps({k: v for k, v in info.as_dict().items() if k != "onnxruntime_providers"}))

    # -- cuda-python buffers ------------------------------------------------
    try:
        from edgeinfer.backends.tensorrt import cuda_buffers

        took = cuda_buffers.round_trip_check(8 << 20)
        row("cuda-python pinned->device->pinned 8 MiB", True, f"{took * 1e3:.2f} ms, bytes equal")
    except Exception as exc:  # noqa: BLE001
        row("cuda-python pinned->device->pinned 8 MiB", False, repr(exc))

    # -- which TensorRT -------------------------------------------------------
    from edgeinfer.backends.tensorrt import compat

    try:
        api = compat.import_tensorrt()
    except BackendUnavailable as exc:
        row("import TensorRT", False, str(exc))
        return report()
    row("import TensorRT", True, f"{api.label}; strongly_typed_flag={api.strongly_typed_flag} "
        f"weak_typing={api.has_weak_typing} progress_monitor={api.has_progress_monitor} "
        f"timing_cache={api.has_timing_cache}")
    cc_enum = getattr(api.module, "ComputeCapability", None)
    if cc_enum is not None:
        print("ComputeCapability members:", [m for m in dir(cc_enum) if m.isupper() or m.startswith("SM")])
    print("BuilderFlag members:", [m for m in dir(api.module.BuilderFlag) if m.isupper()])

    # -- build through RunnerFromOnnx ----------------------------------------
    shutil.rmtree(args.cache, ignore_errors=True)
    model = model_config(args.onnx, args.target, args.instances)
    messages: list[str] = []
    request = LoadRequest(model=model, onnx_path=Path(model.onnx), precision="fp32",
                          cache_dir=args.cache, progress=messages.append)

    runner, exc, secs = attempt("first", request, messages)
    first_msgs = list(messages)
    built = any(m.startswith("building engine") for m in first_msgs)
    print("first call progress:", *first_msgs, sep="\n  ")
    from edgeinfer.backends.tensorrt import cache as engine_cache

    entries = engine_cache.list_entries(args.cache)
    row("1st call builds the engine", built and len(entries) == 1,
        f"{secs:.2f} s, build ran={built}, cache entries={len(entries)}")
    if entries:
        e = entries[0]
        m = e.manifest or {}
        row("cache entry + manifest written", e.engine_path.is_file() and e.manifest is not None,
            f"{e.engine_path.name[:16]}... {e.size} bytes, build {m.get('build_seconds')} s, "
            f"profiles {m.get('key_fields', {}).get('build', {}).get('profiles')}")
        print("manifest key_fields:", json.dumps(m.get("key_fields"), sort_keys=True))
    if runner is not None:
        row("1st call result", True, f"runner active: {runner.info}")
        runner.deactivate()
    else:
        row("1st call result: BackendUnavailable with the runtime's reason", isinstance(exc, BackendUnavailable),
            f"{type(exc).__name__}: {exc}")

    runner2, exc2, secs2 = attempt("second", request, messages)
    second_msgs = list(messages)
    print("second call progress:", *second_msgs, sep="\n  ")
    hit = any(m.startswith("engine cache hit") for m in second_msgs)
    rebuilt = any(m.startswith("building engine") for m in second_msgs)
    row("2nd call hits the cache (no build)", hit and not rebuilt, f"{secs2:.2f} s, hit={hit}, build ran={rebuilt}")
    if runner2 is None:
        row("2nd call result: BackendUnavailable", isinstance(exc2, BackendUnavailable), f"{type(exc2).__name__}: {exc2}")
    else:
        runner2.deactivate()

    # -- `edgeinfer build` path -------------------------------------------------
    from edgeinfer.backends.tensorrt.loader import EngineBytesFromOnnx

    try:
        res = EngineBytesFromOnnx(request)()
        row("EngineBytesFromOnnx (edgeinfer build) reuses the entry", res.blob.from_cache,
            json.dumps({k: res.summary()[k] for k in ("from_cache", "size", "key")}))
    except Exception as exc3:  # noqa: BLE001
        row("EngineBytesFromOnnx (edgeinfer build)", False, f"{type(exc3).__name__}: {exc3}")

    ver = engine_cache.verify(args.cache)
    row("cache verify", bool(ver) and all(ok for _, ok, _ in ver), "; ".join(f"{e.key[:12]}: {r}" for e, _, r in ver))

    # -- parser error path -------------------------------------------------------
    bad = args.cache.parent / "truncated.onnx"
    bad.write_bytes(args.onnx.read_bytes()[: 4096])
    bad_model = model_config(args.onnx, args.target, 1)
    bad_request = LoadRequest(model=bad_model, onnx_path=bad, precision="fp32", cache_dir=args.cache)
    _, exc4, _ = attempt("bad", bad_request, messages)
    row("truncated ONNX -> BackendLoadError", isinstance(exc4, BackendLoadError), f"{type(exc4).__name__}: {exc4}"[:300])

    # -- an op TensorRT has no importer for: the parser's own errors --------------
    unsupported = write_unsupported_onnx(args.cache.parent / "unsupported-op.onnx")
    un_request = LoadRequest(model=bad_model, onnx_path=unsupported, precision="fp32", cache_dir=args.cache)
    _, exc5, _ = attempt("unsupported", un_request, messages)
    row("unsupported op -> BackendLoadError with parser errors",
        isinstance(exc5, BackendLoadError) and "FancyOp" in str(exc5), f"{type(exc5).__name__}: {exc5}"[:400])
    return report()


def write_unsupported_onnx(path: Path) -> Path:
    """A valid ONNX whose only node is an op in a custom domain that no TensorRT importer knows."""
    import onnx
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, 224, 224])
    node = helper.make_node("FancyOp", ["input"], ["out"], name="fancy_1", domain="com.edgeinfer.test")
    graph = helper.make_graph([node], "unsupported", [inp], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.edgeinfer.test", 1)], ir_version=9)
    onnx.save(model, str(path))
    return path


def report() -> int:
    width = max(len(r[0]) for r in rows) if rows else 10
    print("\n" + "=" * 100)
    print(f"{'check':<{width}}  result  detail")
    print("-" * 100)
    for check, res, detail in rows:
        print(f"{check:<{width}}  {res:<6}  {detail[:160]}")
    print("=" * 100)
    return 0 if all(r[1] == "PASS" for r in rows) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:  # noqa: BLE001 - show everything that happened on the device
        traceback.print_exc()
        report()
        sys.exit(2)
