"""The before/after report: one model measured in several variants in one run.

`edgeinfer bench --variants precision` (or `decode`, `backend`) serves one
model once per variant (fp32 / fp16 / int8; CPU or GPU decode; a backend),
each in a daemon of its own started from the same config, and measures the
same things for each on the same photos:

- latency at concurrency 1 (P50 / P95 / P99 and the distribution),
- throughput at a saturating concurrency (the largest of --concurrency),
- host memory of the daemon's processes (resident, after loading and at the end)
  and GPU memory where a GPU serves,
- load time (the model's own, from its state: conversion, calibration, gate, warm-up),
- the accuracy gate's figures against the fp32 model (top-1 agreement, top-5
  overlap, IoU, cosine) with the gate's verdict at the configured threshold.

A variant the gate would refuse is still measured: each variant's daemon is
configured with that precision alone and the gate's thresholds at 0, so it
serves; the figures are compared here with the thresholds the config asked for
and the verdict printed beside them ("refused by the gate" = would not serve
in production). That is the point of the report: the customer sees what int8
would have cost in accuracy, not only that it was refused.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as _dt
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from edgeinfer.config import ACCURACY_GATES, Config
from edgeinfer_bench import environment
from edgeinfer_bench.loadgen import INFER_METHOD, LoadClients, LoadResult, LoadSpec
from edgeinfer_bench.report import _f, write_json
from edgeinfer_bench.stats import summarize
from edgeinfer_bench.workload import find_images, image_payload

Progress = Callable[[str], None]

AXES = ("precision", "decode", "backend")
DEFAULT_VALUES = {"precision": ["fp32", "fp16", "int8"], "decode": ["cpu", "gpu"],
                  "backend": ["onnxruntime", "tensorrt"]}
# Figures shown in the accuracy table, in this order, where the gate reported them.
ACCURACY_FIGURES = ("top1_agreement", "top5_overlap", "top1_in_reference_top5", "mean_iou", "matched_iou",
                    "count_agreement", "cosine", "cosine_mean", "cosine_min", "max_abs_diff")


@dataclass
class VariantSettings:
    config: Config
    model: str
    axis: str
    values: list[str]
    images: Path
    saturating: int = 8
    duration_s: float = 10.0
    warmup_s: float = 2.0
    rounds: int = 1
    client_processes: int = 0
    title: str = ""
    command: str = ""
    work_dir: Optional[Path] = None


def variant_config(config: Config, model: str, axis: str, value: str) -> tuple[Config, dict]:
    """`config` with only `model`, changed along `axis` to `value`; and the gate thresholds it asked for.

    precision: that precision alone, the gate's thresholds at 0 so that a refused precision is served
    and measured anyway (the configured thresholds come back for the verdict). decode: [models.input]
    decode. backend: that backend alone.
    """
    if axis not in AXES:
        raise ValueError(f"variant axis must be one of {AXES}, got {axis!r}")
    cfg = copy.deepcopy(config)
    models = [m for m in cfg.models if m.name == model]
    if not models:
        raise ValueError(f"model {model!r} is not in the config (models: {[m.name for m in cfg.models]})")
    m = models[0]
    cfg.models = [m]
    cal = m.calibration
    thresholds = {"min_top1_agreement": cal.min_top1_agreement, "min_mean_iou": cal.min_mean_iou,
                  "min_cosine": cal.min_cosine}
    if axis == "precision":
        m.precision = [value]
        cal.min_top1_agreement = cal.min_mean_iou = cal.min_cosine = 0.0
    elif axis == "decode":
        m.input.decode = value
    else:
        m.backends = [value]
    return cfg, thresholds


def gate_verdict(task: str, accuracy: Optional[dict], thresholds: dict, precision: str) -> dict:
    """The accuracy gate's verdict at the configured threshold for a variant's accuracy figures."""
    metric, key = ACCURACY_GATES.get(task, ("", ""))
    if precision == "fp32":
        return {"metric": metric, "threshold": thresholds.get(key), "value": 1.0, "passed": True,
                "text": "reference"}
    if not accuracy or metric not in accuracy.get("metrics", {}):
        return {"metric": metric, "threshold": thresholds.get(key), "value": None, "passed": None,
                "text": "no gate figures"}
    value = float(accuracy["metrics"][metric])
    threshold = float(thresholds[key])
    passed = value >= threshold
    op = ">=" if passed else "<"
    return {"metric": metric, "threshold": threshold, "value": value, "passed": passed,
            "text": f"{'passes' if passed else 'REFUSED by'} the gate: {metric} {value:.3f} {op} {threshold:g}"}


_LOAD_S = re.compile(r" in ([0-9.]+)s")


def load_seconds(reason: str) -> Optional[float]:
    """The model's load time from its ready state ("ready on onnxruntime/fp16 (cpu) in 3.2s")."""
    m = _LOAD_S.search(reason or "")
    return float(m.group(1)) if m else None


def tree_rss_mb(root: int) -> Optional[float]:
    """Resident memory of `root` and its descendants (MiB), from /proc; None off Linux."""
    total = 0
    try:
        pids = environment.descendants(root)
    except OSError:
        return None
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
        except (OSError, ValueError):
            continue
    return round(total / 1024.0, 1) if total else None


def gpu_memory_mb(root: int) -> Optional[float]:
    """GPU memory used by `root` and its descendants (MiB) per nvidia-smi; None without a GPU."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    pids = set(environment.descendants(root))
    used = 0.0
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) in pids:
            try:
                used += float(parts[1])
            except ValueError:
                continue
    return used


def _model_info(address: str, name: str) -> dict:
    from edgeinfer_client import Client

    with Client(address, timeout=30) as client:
        return client.get_model(name).to_dict()


def _spec(address: str, settings: VariantSettings, requests: list[bytes], concurrency: int, label: str) -> LoadSpec:
    return LoadSpec(address=address, method=INFER_METHOD, mode="unary", requests=requests,
                    concurrency=concurrency, duration_s=settings.duration_s, warmup_s=settings.warmup_s,
                    processes=settings.client_processes, response_kind="infer", label=label)


def _loadavg() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover - not on Linux
        return None


def combine_rounds(slices: list[LoadResult], concurrency: int, duration_s: float) -> dict:
    """One point from its rounds' slices: percentiles of every latency together, throughput the median round."""
    lat = np.concatenate([r.latencies_s for r in slices]) if slices else np.empty(0)
    summary = summarize(lat, duration_s * max(1, len(slices)), sum(r.summary.errors for r in slices))
    rates = [r.summary.throughput for r in slices]
    point = dict(summary.as_dict(), concurrency=concurrency, rounds=len(slices),
                 round_throughputs=[round(x, 2) for x in rates],
                 server_timing_us=slices[-1].server_timing_us if slices else {},
                 first_errors=[e for r in slices for e in r.first_errors][:3],
                 cpu=[getattr(r, "cpu", {}) for r in slices])
    point["throughput"] = float(np.median(rates)) if rates else 0.0
    if concurrency == 1 and lat.size:
        # The latency distribution's plot: a few thousand sorted values are plenty.
        ms = np.sort(lat) * 1e3
        point["latencies_ms"] = [round(float(v), 4) for v in ms[::max(1, ms.size // 4000)]]
    return point


def _start_variant(settings: VariantSettings, value: str, stack: contextlib.ExitStack,
                   progress: Progress) -> tuple[dict, Optional[str], Optional[int]]:
    """Start the variant's daemon (kept in `stack`); its description, and its address and pid when it serves."""
    from edgeinfer_bench.daemon_proc import DaemonProcess

    cfg, thresholds = variant_config(settings.config, settings.model, settings.axis, value)
    if settings.work_dir is not None:
        # An empty engine cache per variant: its load time includes the conversion, calibration and
        # gate a first start pays, not a cache hit left by an earlier run.
        cfg.cache.dir = str(settings.work_dir / f"cache-{value}")
    mcfg = cfg.models[0]
    out: dict = {"variant": value, "axis": settings.axis, "thresholds": thresholds}
    progress(f"[variants] {settings.model} {settings.axis}={value}: starting the daemon")
    t0 = time.perf_counter()
    try:
        daemon = stack.enter_context(DaemonProcess(cfg))
    except RuntimeError as exc:
        out.update(state="failed", reason=f"the daemon did not start: {exc}",
                   gate={"text": "not measured", "value": None, "passed": None})
        return out, None, None
    out["daemon_start_s"] = round(time.perf_counter() - t0, 2)
    state, reason, device = daemon.model_states.get(settings.model, ("failed", "not loaded", ""))
    out.update(state=state, reason=reason, device=device, load_s=load_seconds(reason))
    address = f"127.0.0.1:{daemon.port}"
    try:
        info = _model_info(address, settings.model)
    except Exception as exc:  # noqa: BLE001 - the variant is reported with what is known
        info = {"state": state, "state_reason": f"GetModel failed: {exc}"}
    out["backend"], out["precision"] = info.get("backend", ""), info.get("precision", "")
    out["attempts"] = info.get("attempts", [])
    acc = [a for a in info.get("accuracy", []) if a.get("precision") == out["precision"]]
    out["accuracy"] = acc[0] if acc else None
    served_precision = out["precision"] or (value if settings.axis == "precision" else "fp32")
    out["gate"] = gate_verdict(mcfg.postprocess.task, out["accuracy"], thresholds, served_precision)
    if state != "ready":
        return out, None, None
    out["host_rss_mb_loaded"] = tree_rss_mb(daemon.pid)
    out["gpu_mb_loaded"] = gpu_memory_mb(daemon.pid)
    return out, address, daemon.pid


def run_variants(settings: VariantSettings, progress: Optional[Progress] = None) -> dict:
    """Measure every variant of settings.model; the results as one JSON-ready dict.

    Every variant's daemon is started first and stays loaded; then each round measures one
    slice of each variant at 1 client and at the saturating concurrency, in turn (odd rounds
    in reverse order), so that a machine whose load drifts (a shared CPU) weighs on every
    variant alike. Throughput is the median round; percentiles pool every round's latencies.
    """
    progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    image_paths = find_images(settings.images)
    payload = image_payload(settings.model, image_paths, "jpeg")
    mcfg = settings.config.model(settings.model)
    rounds = max(1, settings.rounds)
    results = {
        "kind": "variants",
        "title": settings.title or f"{settings.model}: {settings.axis} variants",
        "command": settings.command,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment.describe(),
        "model": settings.model,
        "onnx": mcfg.onnx,
        "task": mcfg.postprocess.task,
        "axis": settings.axis,
        "settings": {"values": settings.values, "saturating_concurrency": settings.saturating,
                     "duration_s": settings.duration_s, "warmup_s": settings.warmup_s, "rounds": rounds,
                     "payload": payload.description, "images": [str(p) for p in image_paths],
                     "validation": mcfg.calibration.validation or mcfg.calibration.images,
                     "config_source": settings.config.source},
        "variants": [],
        "loadavg": [],
    }
    levels = sorted({1, settings.saturating})
    with contextlib.ExitStack() as stack:
        if settings.work_dir is None:
            settings = dataclasses.replace(
                settings, work_dir=Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgeinfer-variants-"))))
        served = []
        for value in settings.values:
            out, address, pid = _start_variant(settings, value, stack, progress)
            results["variants"].append(out)
            if address:
                clients = {c: stack.enter_context(LoadClients(_spec(address, settings, payload.requests, c,
                                                                     f"{settings.model} {value} c={c}")))
                           for c in levels}
                served.append((out, pid, clients, {c: [] for c in levels}))
        for k in range(rounds):
            order = served if k % 2 == 0 else served[::-1]
            for out, pid, clients, slices in order:
                for c in levels:
                    meter = environment.WindowCpu(pid)
                    res = clients[c].run_slice(progress=None,
                                               on_start=lambda m=meter: m.start(settings.warmup_s, settings.duration_s))
                    res.cpu = meter.wait()
                    slices[c].append(res)
                    progress(f"[variants] round {k + 1}/{rounds} {settings.model} {out['variant']} c={c}: "
                             f"{res.summary.throughput:.1f}/s P50 {res.summary.p50_ms or 0:.2f} ms "
                             f"errors {res.summary.errors}")
            results["loadavg"].append(_loadavg())
        for out, pid, _clients, slices in served:
            out["latency"] = combine_rounds(slices[1], 1, settings.duration_s)
            out["throughput"] = combine_rounds(slices[settings.saturating], settings.saturating, settings.duration_s)
            out["host_rss_mb_end"] = tree_rss_mb(pid)
            out["gpu_mb_end"] = gpu_memory_mb(pid)
    baseline = next((v for v in results["variants"] if v.get("throughput")), None)
    for v in results["variants"]:
        if baseline and v.get("throughput") and baseline["throughput"]["throughput"]:
            v["speedup"] = round(v["throughput"]["throughput"] / baseline["throughput"]["throughput"], 3)
    return results


# -- report --------------------------------------------------------------------------------

def _cpu(point: dict, key: str) -> str:
    """The median over a point's rounds of one WindowCpu figure."""
    values = sorted(c[key] for c in point.get("cpu", []) if c and c.get(key) is not None)
    return _f(values[len(values) // 2], 1) if values else "-"


def _accuracy_keys(results: dict) -> list[str]:
    present = set()
    for v in results["variants"]:
        present |= set((v.get("accuracy") or {}).get("metrics", {}))
    return [k for k in ACCURACY_FIGURES if k in present]


def markdown(results: dict, plots: Optional[dict[str, str]] = None) -> str:
    env = results["environment"]
    m = env["machine"]
    s = results["settings"]
    lines = [f"# {results['title']}", "",
             f"Model `{results['model']}` ({results['task']}, `{Path(results['onnx']).name}`), one daemon per "
             f"{results['axis']} variant, started from the same config, the same photos for each: "
             f"{s['payload']}. Latency at 1 client, throughput at {s['saturating_concurrency']} clients "
             f"({s.get('rounds', 1)} interleaved rounds of {s['duration_s']:g} s measured after {s['warmup_s']:g} s "
             "warm-up per point, every daemon loaded throughout; throughput is the median round, percentiles "
             "pool every round).", "",
             f"- machine: {m['cpu_model']}, {m['usable_cpus']} usable CPUs, {m['os']}"
             + (f"; GPUs: {', '.join(m['gpus'])}" if m.get("gpus") else "; no GPU"),
             f"- versions: Python {env['python']}, " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
             f"- source: {env['git']['head'][:12]} ({env['git']['state']})",
             f"- created: {results['created']}; command: `{results['command']}`",
             f"- 1-minute load average after each round: {', '.join(str(x) for x in results.get('loadavg', []))} "
             f"(on {m['usable_cpus']} CPUs: above that, other work shared the machine)",
             f"- accuracy: the daemon's gate on its validation set `{s['validation'] or '-'}` against the fp32 model; "
             "every variant is forced to serve (gate thresholds at 0) and judged here at the configured threshold",
             "- load s: the model's load in its daemon from an empty engine cache (conversion, calibration, "
             "gate, warm-up)",
             "", "## Speed and memory", "",
             "| variant | served | load s | P50 ms (c=1) | P95 ms | P99 ms | img/s (c=1) | img/s (c=%d) | vs first | "
             "host MiB | GPU MiB | daemon cores (c=%d) | steal %% | errors |" % (s["saturating_concurrency"],
                                                                          s["saturating_concurrency"]),
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for v in results["variants"]:
        lat, thr = v.get("latency") or {}, v.get("throughput") or {}
        served = f"{v.get('backend') or '-'}/{v.get('precision') or '-'} {v.get('device') or ''}".strip()
        decode = re.search(r"decode on ([^;]+)", v.get("reason") or "")
        if decode:
            served += f"; decode on {decode.group(1)}"
        if v.get("state") != "ready":
            served = f"{v.get('state')}: {v.get('reason', '')}"
        errors = (lat.get("errors") or 0) + (thr.get("errors") or 0)
        lines.append(f"| {v['variant']} | {served} | {_f(v.get('load_s'))} | {_f(lat.get('p50_ms'), 2)} | "
                     f"{_f(lat.get('p95_ms'), 2)} | {_f(lat.get('p99_ms'), 2)} | {_f(lat.get('throughput'))} | "
                     f"{_f(thr.get('throughput'))} | {_f(v.get('speedup'), 2)}x | {_f(v.get('host_rss_mb_end'), 0)} | "
                     f"{_f(v.get('gpu_mb_end'), 0)} | {_cpu(thr, 'server_cores')} | {_cpu(thr, 'steal_pct')} | "
                     f"{errors} |")
    keys = _accuracy_keys(results)
    lines += ["", "## Accuracy against fp32 (the gate's figures)", "",
              "| variant | gate verdict | samples | " + " | ".join(keys) + " |",
              "| --- | --- | --- | " + " | ".join("---" for _ in keys) + " |"]
    for v in results["variants"]:
        acc = v.get("accuracy") or {}
        figures = acc.get("metrics", {})
        lines.append(f"| {v['variant']} | {v['gate']['text']} | {acc.get('samples', '-')} | "
                     + " | ".join(_f(figures.get(k), 4) for k in keys) + " |")
    for section in results.get("sections", []):
        lines += ["", f"## {section['title']}", ""] + list(section["lines"])
    if plots:
        lines += ["", "## Plots", ""] + [f"![{k}]({name})" for k, name in plots.items()]
    lines += ["", "## Load attempts", ""]
    for v in results["variants"]:
        for a in v.get("attempts", []):
            lines.append(f"- {v['variant']}: {a['backend']}/{a['precision']} {a['outcome']}: {a['reason']}")
    lines += ["", "Numbers: the JSON beside this file. Host MiB: resident memory of the daemon's processes "
              "after the throughput point; GPU MiB: nvidia-smi's figure for them.", ""]
    return "\n".join(lines)


def write_plots(results: dict, folder: Path, stem: str) -> dict[str, str]:
    """latency distribution, throughput bars, accuracy beside speed; returns {kind: file name}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [v for v in results["variants"] if v.get("latency")]
    written: dict[str, str] = {}
    if not variants:
        return written
    sat = results["settings"]["saturating_concurrency"]

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for v in variants:
        lat = v["latency"].get("latencies_ms") or []
        if lat:
            ys = [(i + 1) / len(lat) for i in range(len(lat))]
            ax.plot(lat, ys, label=f"{v['variant']} (P50 {v['latency']['p50_ms']:.2f} ms)")
    ax.set_xscale("log")
    ax.set_xlabel("latency, ms (1 client)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"{results['model']}: latency distribution", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    written["latency"] = _save(plt, fig, folder, f"{stem}-latency.png")

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    names = [v["variant"] for v in variants]
    c1 = [v["latency"]["throughput"] for v in variants]
    cs = [(v.get("throughput") or {}).get("throughput", 0.0) for v in variants]
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], c1, width=0.4, label="1 client")
    ax.bar([x + 0.2 for x in xs], cs, width=0.4, label=f"{sat} clients")
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("images / s")
    ax.set_title(f"{results['model']}: throughput", fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    written["throughput"] = _save(plt, fig, folder, f"{stem}-throughput.png")

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for v in variants:
        g = v["gate"]
        if g.get("value") is None:
            continue
        thr = (v.get("throughput") or {}).get("throughput", 0.0)
        ax.scatter([thr], [g["value"]], s=60, marker="o" if g["passed"] else "x", label=f"{v['variant']}: {g['text']}")
        ax.annotate(v["variant"], (thr, g["value"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    threshold = next((v["gate"]["threshold"] for v in variants if v["gate"].get("threshold") is not None), None)
    if threshold is not None:
        ax.axhline(threshold, color="grey", linestyle="--", linewidth=1, label=f"gate threshold {threshold:g}")
    metric = next((v["gate"]["metric"] for v in variants), "")
    ax.set_xlabel(f"images / s at {sat} clients")
    ax.set_ylabel(f"{metric} against fp32")
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.05)
    ax.set_title(f"{results['model']}: accuracy beside speed", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, loc="lower left")
    written["accuracy"] = _save(plt, fig, folder, f"{stem}-accuracy.png")
    return written


def _save(plt, fig, folder: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(folder / name, dpi=80)
    plt.close(fig)
    return name


def write_report(results: dict, folder: Path, stem: str, plots: bool = True) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    names: dict[str, str] = {}
    if plots:
        try:
            names = write_plots(results, folder, stem)
        except ImportError:
            results.setdefault("notes", []).append("plots skipped: matplotlib is not installed")
    paths = {k: folder / n for k, n in names.items()}
    paths["json"] = folder / f"{stem}.json"
    write_json(results, paths["json"])
    paths["markdown"] = folder / f"{stem}.md"
    paths["markdown"].write_text(markdown(results, names))
    return paths


def summary_text(results: dict) -> str:
    lines = [f"{results['model']}: {results['axis']} variants"]
    for v in results["variants"]:
        lat, thr = v.get("latency") or {}, v.get("throughput") or {}
        lines.append(f"  {v['variant']:<8} {v.get('state', '-'):<7} P50 {_f(lat.get('p50_ms'), 2)} ms  "
                     f"P99 {_f(lat.get('p99_ms'), 2)} ms  {_f(thr.get('throughput'))} img/s  "
                     f"load {_f(v.get('load_s'))} s  {v['gate']['text']}")
    return "\n".join(lines)


def parse_values(axis: str, text: str) -> list[str]:
    """--variant-values for `axis` (empty: the axis's defaults), checked against what the config accepts."""
    values = [x.strip() for x in text.split(",") if x.strip()] or list(DEFAULT_VALUES[axis])
    allowed = {"precision": ("fp32", "fp16", "int8"), "decode": ("cpu", "gpu", "auto"),
               "backend": ("onnxruntime", "tensorrt")}[axis]
    bad = [v for v in values if v not in allowed]
    if bad or len(set(values)) != len(values):
        raise ValueError(f"{axis} variants are {', '.join(allowed)} (each once), got {text!r}")
    return values

