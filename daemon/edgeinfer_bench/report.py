"""Benchmark results as JSON (everything), Markdown (for people) and PNG plots (matplotlib).

The JSON is the source of truth; the Markdown and the plots are made from it,
so `write_report(json.load(f), ...)` can redraw an old run.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from edgeinfer_bench.stats import HIST_EDGES_MS

PLOT_FILES = {
    "latency": "latency_vs_concurrency.png",
    "throughput": "throughput_vs_concurrency.png",
    "histogram": "latency_histogram.png",
    "comparison": "comparison.png",
}


def interval_text(t: dict) -> str:
    """A median verdict's interval, e.g. "0.84-0.91 (93%)"; "-" where there is none."""
    if not t.get("interval"):
        return "-"
    low, high = t["interval"]
    return f"{low:.2f}-{high:.2f} ({100 * t['interval_coverage']:.0f}%)"


def _cpus_text(cpus: Optional[dict]) -> str:
    """"; CPUs: ..." for a run whose servers and clients were kept apart (bench/placement.py), else ""."""
    if not cpus or cpus == {"server": "all", "clients": "all"}:
        return ""
    return f"; CPUs: daemon, ceiling and echo {cpus['server']}, load generator {cpus['clients']}"


def _f(v: Optional[float], digits: int = 1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def _ms(v: Optional[float]) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 1 else (f"{v:.2f}" if v < 100 else f"{v:,.0f}")


def write_json(results: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, sort_keys=False, default=str) + "\n")
    return path


# -- Markdown ----------------------------------------------------------------------

# Above this share of all cores stolen by the hypervisor in any point, the report warns.
STEAL_WARN_PCT = 2.0


def _steal_warning(points: list[dict]) -> list[str]:
    """A warning when a hypervisor stole CPU time during some points (none on bare metal)."""
    stolen = [(p["steal_pct"], p) for p in points if p.get("steal_pct") is not None]
    hit = [(pct, p) for pct, p in stolen if pct > STEAL_WARN_PCT]
    if not hit:
        return []
    worst, p = max(hit, key=lambda x: x[0])
    return [f"**CPU time stolen by the hypervisor**: more than {STEAL_WARN_PCT:.0f}% of all cores in "
            f"{len(hit)} of {len(stolen)} points, up to {worst:.1f}% (a {p['target']} point of "
            f"{p['run']}). Steal strikes slices unevenly, so a ratio of two slices can be off either "
            "way, far beyond its usual spread: judge targets on machines without it.", ""]


def _points_table(points: list[dict]) -> list[str]:
    lines = ["| target | mode | conc. | batch | req/s | P50 ms | P95 ms | P99 ms | mean ms | errors | req B | resp B "
             "| server cores | client cores | others' CPU % | steal % |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    order = {"daemon": 0, "ceiling": 1, "echo": 2}
    for p in sorted(points, key=lambda p: (order.get(p["target"], 9), p["mode"], p["concurrency"], p.get("batch", 1))):
        lines.append(f"| {p['target']} | {p['mode']} | {p['concurrency']} | {p.get('batch', 1)} | "
                     f"{_f(p['throughput'])} | {_ms(p['p50_ms'])} | {_ms(p['p95_ms'])} | {_ms(p['p99_ms'])} | "
                     f"{_ms(p['mean_ms'])} | {p['errors']} | {p.get('request_bytes', '-')} | "
                     f"{p.get('response_bytes', '-')} | {_f((p.get('cpu') or {}).get('server_cores'), 2)} | "
                     f"{_f((p.get('cpu') or {}).get('client_cores'), 2)} | {_f(p.get('other_cpu_pct'), 0)} | "
                     f"{_f(p.get('steal_pct'), 1)} |")
    return lines


def _breakdown(points: list[dict]) -> list[str]:
    """Client-seen latency against the daemon's own timing fields (sampled responses)."""
    rows = []
    for p in sorted(points, key=lambda p: (p["mode"], p["concurrency"])):
        t = p.get("server_timing_us") or {}
        if p["target"] != "daemon" or not t or p["mean_ms"] is None:
            continue
        outside = p["mean_ms"] - t["total_us"] / 1e3
        rows.append(f"| {p['mode']} | {p['concurrency']} | {_ms(p['mean_ms'])} | {_ms(t['queue_us'] / 1e3)} | "
                    f"{_ms(t['preprocess_us'] / 1e3)} | {_ms(t['inference_us'] / 1e3)} | "
                    f"{_ms(t['postprocess_us'] / 1e3)} | {_ms(t['total_us'] / 1e3)} | {_ms(outside)} | "
                    f"{_f(t.get('batch_size'), 1)} | {t.get('samples', '-')} |")
    ceil = [p for p in points if p["target"] == "ceiling" and p.get("stage_us")]
    for p in sorted(ceil, key=lambda p: p["concurrency"]):
        s = p["stage_us"]
        rows.append(f"| ceiling | {p['concurrency']} | {_ms(p['mean_ms'])} | - | {_ms(s['preprocess_us'] / 1e3)} | "
                    f"{_ms(s['inference_us'] / 1e3)} | {_ms(s['postprocess_us'] / 1e3)} | - | - | {p.get('batch', 1)} | - |")
    if not rows:
        return []
    return ["| mode | conc. | client mean ms | queue | preprocess | inference | postprocess | daemon total | "
            "outside the pipeline (gRPC, event loop, protobuf) | mean batch | samples |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"] + rows


def markdown(results: dict, plot_names: Optional[dict[str, str]] = None) -> str:
    env = results["environment"]
    m = env["machine"]
    s = results["settings"]
    git = env["git"]
    out = [f"# {results.get('title') or 'edgeinfer benchmark'}", "",
           f"Created {results['created']} by `{results.get('command', 'edgeinfer bench')}`.", "",
           "## Machine and software", "",
           "| | |", "| --- | --- |",
           f"| CPU | {m['cpu_model']}, {m['usable_cpus']} usable of {m['cpu_count']} |",
           f"| GPU | {', '.join(m['gpus']) or 'none'} |",
           f"| OS | {m['os']} ({m['arch']}) |",
           f"| Python | {env['python']} |"]
    for name, ver in env["versions"].items():
        out.append(f"| {name} | {ver} |")
    changed = f": {git['changed']}" if git.get("changed") else ""
    out += [f"| source | `{git.get('head')}` ({git.get('state')}{changed}) |",
            "", "## Settings", "",
            f"- duration {s['duration_s']} s measured per point after {s['warmup_s']} s warm-up; "
            f"concurrency {s['concurrency']}; modes {s['modes']}; payload {s['payload']}; "
            f"InferStream concurrency {s.get('stream_concurrency', s['concurrency'])}; "
            f"stream window {s['stream_window']}; event loop {s['loop']}; client processes "
            f"{s['client_processes'] or 'min(concurrency, CPUs)'}.",
            "- Closed loop: each concurrency slot sends its next request when the last one answers "
            "(InferStream: each slot is one stream keeping `stream window` frames in flight). "
            "A request counts when it completes inside the measured window.",
            "- daemon: the edgeinfer daemon in its own process, driven over gRPC by separate client processes; "
            "ceiling: the same model loaded by ServedModel/ModelLoader, no gRPC, in one process: batch 1 = "
            "`predict()` on that many threads; batch b = concurrency // b threads, each preprocessing b "
            "requests on a pool of threads ([server] workers, or each of `ceiling_pools`), one runner call, postprocessing as the batcher "
            "does (as many images in flight as the clients keep); the best ceiling counts; "
            "echo: a bare grpc.aio server with the same message sizes and no work.",
            "- CPU over the measured window, from /proc: `server cores` = the daemon or echo process (all "
            "threads, and all processes of a multi-process daemon), `client cores` = the load generator processes, `others' CPU %` = share of all cores "
            "used by processes outside the benchmark (for the ceiling: over its point, warm-up "
            "included). Well above 0, the point was contended: compare only points under similar contention. "
            "`steal %` = share of all cores' time a hypervisor gave to other guests (/proc/stat steal): it "
            "slows whatever runs when it strikes, and it is not spread evenly over a round's slices.",
            ""]
    every_point = [p for r in results["runs"] for p in r["points"]] + results.get("echo", [])
    busy = [p["other_cpu_pct"] for p in every_point if p.get("other_cpu_pct") is not None]
    if busy and max(busy) > 10:
        out += [f"**Contended machine**: other processes used {min(busy):.0f}-{max(busy):.0f}% of all cores "
                f"during the points (median {sorted(busy)[len(busy) // 2]:.0f}%). Absolute numbers are low; "
                "ratios hold only between points under similar contention.", ""]
    out += _steal_warning(every_point)
    if results.get("median_targets"):
        n = results["settings"].get("rounds")
        how = ("Rounds were interleaved point by point: daemon, ceiling and echo stayed loaded, and each "
               "round of a point measured one slice of each, back to back (odd rounds in reverse order), "
               "so the machine's drift falls on both sides of a ratio."
               if results["settings"].get("interleave") else
               "Each round measured every run again (daemon, ceiling, echo), round after round.")
        out += [f"## Targets: median of {n} rounds", "",
                how + " The verdict is the median round's ratio; the interval brackets the median with "
                "the probability shown (order statistics, no assumption about the distribution). "
                "An interval that straddles the goal means this many rounds do not settle it.", "",
                "| run | target | median | interval for the median | each round | goal | rounds passed | result |",
                "| --- | --- | ---: | --- | --- | ---: | ---: | --- |"]
        for t in results["median_targets"]:
            verdict = "not measured" if t["passed"] is None else ("**pass**" if t["passed"] else "**miss**")
            each = ", ".join(f"{v:.2f}" for v in t["values"])
            out.append(f"| {t['run']} | {t['title']} | {_f(t['median'], 2)} | {interval_text(t)} | {each} | "
                       f"{t['threshold']:.2f} | {t['passed_rounds']}/{len(t['values'])} | {verdict} |")
        out.append("")
    if results.get("paired"):
        out += ["## Runs compared round by round", "",
                "Each run's ratio minus the first run's, in the same round: the median difference, an "
                "interval for it, and the rounds the run was ahead. "
                + ("The runs were interleaved, so each round's difference compares slices seconds apart."
                   if results["settings"].get("interleave") else
                   "The rounds were sequential, so a difference also holds whatever the machine did between "
                   "the runs (minutes apart)."), "",
                "| run | against | target | median difference | interval | rounds ahead |",
                "| --- | --- | --- | ---: | --- | ---: |"]
        for d in results["paired"]:
            out.append(f"| {d['run']} | {d['against']} | {d['title']} | {d['median']:+.3f} | "
                       f"{d['interval'][0]:+.3f} to {d['interval'][1]:+.3f} ({100 * d['interval_coverage']:.0f}%) | "
                       f"{d['wins']}/{len(d['differences'])} |")
        out.append("")
    if results.get("targets"):
        out += ["## Targets" + (" by round" if results.get("median_targets") else ""), "", "| run | target | measured | goal | result | detail |",
                "| --- | --- | ---: | ---: | --- | --- |"]
        for t in results["targets"]:
            verdict = "not measured" if t["passed"] is None else ("**pass**" if t["passed"] else "**miss**")
            out.append(f"| {t['run']} | {t['title']} | {_f(t['value'], 2)} | {t['threshold']:.2f} | {verdict} | "
                       f"{t['detail']} |")
        out.append("")
    if results.get("ratios"):
        out += ["## Ratios (throughput, same run)", "",
                "| run | model | ratio | mode | conc. | value | numerator/s | denominator/s | P50 ratio |",
                "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in results["ratios"]:
            out.append(f"| {r['run']} | {r['model']} | {r['name']} | {r['mode']} | {r['concurrency']} | "
                       f"{_f(r['value'], 3)} | {_f(r['numerator'])} | {_f(r['denominator'])} | "
                       f"{_f(r.get('latency_p50_ratio'), 2)} |")
        out.append("")
    for run in results["runs"]:
        out += [f"## Run `{run['label']}`", "",
                f"Config: `{run['config_source']}`; daemon: {run['daemon']}; event loop {run.get('loop', '-')}; "
                f"server workers {run['server'].get('workers')}, "
                f"stream window {run['server'].get('stream_window')}" + _cpus_text(run.get("cpus"))
                + (f"; load generator: {run['clients']}" if run.get("clients") else "") + ".", ""]
        for name, info in run["models"].items():
            pts = [p for p in run["points"] if p["model"] == name]
            echo = [p for p in results.get("echo", []) if p["model"] == name and p.get("run") == run["label"]]
            out += [f"### {name}", "",
                    f"Served on {info.get('served_on', '-')}; payload: {info.get('payload', '-')}.", ""]
            out += _points_table(pts + echo)
            bd = _breakdown(pts)
            if bd:
                out += ["", "Where the time goes (daemon timing fields, sampled; "
                        "ceiling stages measured in predict()):", ""]
                out += bd
            out.append("")
    prof = [(r["label"], p) for r in results["runs"] for p in r["points"] if p.get("profile")]
    if prof:
        out += ["## Where the daemon's CPU goes (py-spy, measured window)", "",
                "`threads busy`: CPU (in cores) each thread group used during the measured window, from "
                "/proc. `hottest`: py-spy's share of samples (thread-seconds per second, so a frame where "
                "several threads wait inside ONNX Runtime can exceed the core count), by own time and "
                "inclusive; frames in compiled code show as their Python caller. py-spy itself runs in this "
                "benchmark's process tree: its CPU shows under `client cores` and competes with the daemon, "
                "so take throughput from a run without --profile.", "",
                "| run | model | mode | conc. | threads busy (cores) | hottest (self) | hottest (inclusive) |",
                "| --- | --- | --- | ---: | --- | --- | --- |"]
        for label, p in prof:
            pr = p["profile"]
            if "error" in pr:
                out.append(f"| {label} | {p['model']} | {p['mode']} | {p['concurrency']} | py-spy: {pr['error']} | | |")
                continue
            fmt = lambda items, k: ", ".join(f"{n} {v:.2f}" for n, v in items[:k])  # noqa: E731
            out.append(f"| {label} | {p['model']} | {p['mode']} | {p['concurrency']} | {fmt(pr['threads'], 5)} | "
                       f"{fmt(pr['self'], 4)} | {fmt(pr['inclusive'], 4)} |")
        out.append("")
    if results.get("notes"):
        out += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    if plot_names:
        out += ["## Plots", ""]
        for key, fname in plot_names.items():
            out.append(f"![{key}]({fname})")
        out.append("")
    # One JSON line per table: readable, and still exactly what ran (the .json has it too).
    out += ["## Configuration", ""]
    for r in results["runs"]:
        out += [f"Run `{r['label']}` ({r['config_source']}):", "", "```json",
                json.dumps({"server": r["server"]}, default=str)]
        out += [json.dumps({"model": i.get("config")}, default=str) for i in r["models"].values()]
        out += ["```", ""]
    return "\n".join(out)


# -- plots ----------------------------------------------------------------------------

def _series(points: list[dict], **where) -> list[dict]:
    sel = [p for p in points if all(p.get(k) == v for k, v in where.items())]
    return sorted(sel, key=lambda p: p["concurrency"])


def _best_ceiling(points: list[dict], model: str) -> list[dict]:
    """One ceiling point per concurrency: the best of its thread/batch variants (the one ratios use)."""
    best: dict[int, dict] = {}
    for p in points:
        if p["target"] == "ceiling" and p["model"] == model:
            c = p["concurrency"]
            if c not in best or p["throughput"] > best[c]["throughput"]:
                best[c] = p
    return [best[c] for c in sorted(best)]


def _style(ax, title: str, xlabel: str, ylabel: str, xscale: tuple = ("log", 2), yscale: str = "log",
           grid_which: str = "major") -> None:
    """One panel's common look: per-model title, log axes, grid, small legend."""
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if xscale[1]:
        ax.set_xscale(xscale[0], base=xscale[1])
    else:
        ax.set_xscale(xscale[0])
    if yscale:
        ax.set_yscale(yscale)
    ax.grid(True, which=grid_which, alpha=0.3)
    ax.legend(fontsize=6)


def _save(plt, fig, folder: Path, names: dict, written: dict, key: str) -> None:
    fig.tight_layout()
    fig.savefig(folder / names[key])
    plt.close(fig)
    written[key] = names[key]


def write_plots(results: dict, folder: Path, stem: str = "") -> dict[str, str]:
    """Draw the PNGs into `folder`; returns {kind: file name}. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = {k: f"{stem}{v}" for k, v in PLOT_FILES.items()}
    runs = results["runs"]
    models = []
    for r in runs:
        for n in r["models"]:
            if n not in models:
                models.append(n)
    echo = results.get("echo", [])
    ncols = max(1, len(models))
    written = {}

    # 1. latency percentiles vs concurrency
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 3.6), squeeze=False, dpi=80)
    for ax, model in zip(axes[0], models):
        for r in runs:
            pts = _series(r["points"], model=model, target="daemon", mode="unary")
            if not pts:
                continue
            xs = [p["concurrency"] for p in pts]
            for q, style in (("p50_ms", "-o"), ("p95_ms", "--s"), ("p99_ms", ":^")):
                ax.plot(xs, [p[q] for p in pts], style, label=f"{r['label']} daemon {q[:3].upper()}", ms=3)
            cp = _best_ceiling(r["points"], model)
            if cp:
                ax.plot([p["concurrency"] for p in cp], [p["p50_ms"] for p in cp], "-x", color="gray",
                        label=f"{r['label']} ceiling P50", ms=4)
        for r in runs:
            ep = _series(echo, run=r["label"], model=model, mode="unary")
            if ep:
                ax.plot([p["concurrency"] for p in ep], [p["p50_ms"] for p in ep], "-.", ms=3,
                        label=f"{r['label']} echo P50")
        _style(ax, model, "concurrency", "latency (ms)", grid_which="both")
    _save(plt, fig, folder, names, written, "latency")

    # 2. throughput vs concurrency
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 3.6), squeeze=False, dpi=80)
    for ax, model in zip(axes[0], models):
        for r in runs:
            for target, mode, style in (("daemon", "unary", "-o"), ("daemon", "stream", "-s"),
                                        ("ceiling", None, "--x")):
                if target == "ceiling":
                    pts = _best_ceiling(r["points"], model)
                else:
                    pts = _series(r["points"], model=model, target=target, mode=mode)
                if pts:
                    ax.plot([p["concurrency"] for p in pts], [p["throughput"] for p in pts], style, ms=3,
                            label=f"{r['label']} {target}{' ' + mode if mode else ''}")
        for r in runs:
            for mode, style in (("unary", "-."), ("stream", ":")):
                ep = _series(echo, run=r["label"], model=model, mode=mode)
                if ep:
                    ax.plot([p["concurrency"] for p in ep], [p["throughput"] for p in ep], style,
                            label=f"{r['label']} echo {mode}")
        _style(ax, model, "concurrency", "requests / s")
    _save(plt, fig, folder, names, written, "throughput")

    # 3. latency histograms at the highest unary concurrency measured
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 3.4), squeeze=False, dpi=80)
    centers = [(a * b) ** 0.5 for a, b in zip(HIST_EDGES_MS[:-1], HIST_EDGES_MS[1:])]
    for ax, model in zip(axes[0], models):
        for r in runs:
            pts = _series(r["points"], model=model, target="daemon", mode="unary")
            if not pts:
                continue
            top = pts[-1]
            for p, name in ((top, "daemon"),
                            (next((c for c in _best_ceiling(r["points"], model)
                                   if c["concurrency"] == top["concurrency"]), None), "ceiling")):
                if p and p.get("hist_counts"):
                    ax.step(centers, p["hist_counts"], where="mid", label=f"{r['label']} {name} c={p['concurrency']}")
        _style(ax, model, "latency (ms)", "requests", xscale=("log", None), yscale="")
    _save(plt, fig, folder, names, written, "histogram")

    # 4. configurations side by side (only with several runs)
    if len(runs) > 1:
        fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(models) * len(runs)), 3.6), dpi=80)
        width = 0.8 / len(runs)
        for i, r in enumerate(runs):
            vals = []
            for model in models:
                pts = _series(r["points"], model=model, target="daemon", mode="unary")
                vals.append(max((p["throughput"] for p in pts), default=0.0))
            ax.bar([j + i * width for j in range(len(models))], vals, width, label=r["label"])
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(models))])
        ax.set_xticklabels(models)
        ax.set_ylabel("best unary requests / s")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax.grid(True, axis="y", alpha=0.3)
        _save(plt, fig, folder, names, written, "comparison")
    return written


def write_report(results: dict, folder: Path, stem: str, plots: bool = True) -> dict[str, Path]:
    """Write <stem>.json, <stem>.md and the PNGs into `folder`; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_json(results, folder / f"{stem}.json")}
    plot_names = write_plots(results, folder, stem=f"{stem}-") if plots else {}
    md = folder / f"{stem}.md"
    md.write_text(markdown(results, plot_names))
    paths["markdown"] = md
    for k, v in plot_names.items():
        paths[k] = folder / v
    return paths
