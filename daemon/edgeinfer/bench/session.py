"""One benchmark session: daemon points, ceilings, echo floor, ratios, targets.

Order inside a run: the daemon is started (or reached at --address) and every
model/mode/concurrency point is driven through it; then the daemon stops and
the ceiling loads each model in a fresh process; the echo floor comes last,
with the message sizes the daemon actually sent and answered. Nothing runs
concurrently with a measured point except that point's own processes.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..config import Config, ModelConfig, OnnxRuntimeConfig, TensorRTConfig
from . import analysis, environment
from .ceiling import CeilingSpec, run_ceiling
from .daemon_proc import DaemonProcess
from .echo import EchoServer, stream_method, unary_method
from .loadgen import INFER_METHOD, STREAM_METHOD, LoadSpec, run_load
from ..eventloop import resolve
from .profile import Sampler
from .trivial import NAME as TRIVIAL, WIDTH as TRIVIAL_WIDTH, build_trivial_onnx, trivial_model_config
from .workload import Payload, find_images, image_payload, tensor_payload

Progress = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class RunSpec:
    """One configuration to measure: a config (to start a daemon and the ceiling) and/or an address."""

    label: str
    config: Optional[Config] = None
    address: Optional[str] = None  # a daemon already running: not started, not stopped
    loop: Optional[str] = None     # event loop of this run's daemon/echo/clients (None: the settings')


@dataclass
class BenchSettings:
    runs: list[RunSpec]
    images: Path
    concurrency: list[int] = field(default_factory=lambda: [1, 8, 32])
    # InferStream points (empty: `concurrency`). Each stream keeps `stream_window` frames in flight.
    stream_concurrency: list[int] = field(default_factory=list)
    modes: list[str] = field(default_factory=lambda: ["unary"])
    duration_s: float = 10.0
    warmup_s: float = 1.0
    payload: str = "jpeg"
    models: list[str] = field(default_factory=list)  # empty: every model of the config
    trivial: bool = True
    ceiling: bool = True
    ceiling_batches: list[int] = field(default_factory=lambda: [1])
    # Preprocessing pools the batched ceiling tries (the best counts); empty = default_ceiling_pools().
    # A multi-process daemon has workers x processes threads; one process's best pool can differ.
    ceiling_pools: list[int] = field(default_factory=list)
    # Also measure the ceiling with [server] workers threads where clients outnumber them: the
    # daemon never runs more than `workers` requests at once, and on few cores more threads
    # than that can be slower in-process. The best ceiling counts.
    ceiling_at_workers: bool = True
    echo: bool = True
    # Repeat every run this many times, round by round (run A, run B, run A, run B...), and judge
    # the targets on the median ratio: on a shared or noisy machine one point can be 20% off.
    rounds: int = 1
    echo_concurrency: list[int] = field(default_factory=lambda: [1, 8])
    stream_window: int = 0        # 0: the daemon's [server] stream_window
    client_processes: int = 0     # 0: min(concurrency, CPUs)
    loop: str = "asyncio"
    daemon_metrics: bool = False
    # Sample the daemon with py-spy during each daemon point (when installed).
    profile: bool = False
    work_dir: Optional[Path] = None
    title: str = ""
    command: str = ""
    # Goals to grade each run against (analysis.cpu_targets: the CPU goals).
    targets: Callable[[dict], list] = analysis.cpu_targets


def _with_trivial(config: Config, work_dir: Path) -> Config:
    cfg = copy.deepcopy(config)
    if any(m.name == TRIVIAL for m in cfg.models):
        return cfg
    onnx_path = build_trivial_onnx(work_dir / "trivial.onnx")
    cfg.models.append(trivial_model_config(onnx_path.resolve()))
    return cfg


def _payload_for(model_cfg, settings: BenchSettings, image_paths) -> Optional[Payload]:
    if model_cfg.name == TRIVIAL:
        return tensor_payload(TRIVIAL, {"x": (1, TRIVIAL_WIDTH)})
    if model_cfg.postprocess.task == "raw" and not model_cfg.input.tensor:
        return None  # a tensor model we know nothing about: no meaningful payload
    return image_payload(model_cfg.name, image_paths, settings.payload)


def _loadavg() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover - not on Linux
        return -1.0


def _point(run: str, target: str, model: str, mode: str, concurrency: int, summary, **extra) -> dict:
    # The 1-minute load average after the point: on a shared box a high value
    # means other work competed with this measurement.
    d = dict(run=run, target=target, model=model, mode=mode, concurrency=concurrency, batch=1, loadavg=_loadavg())
    d.update(summary.as_dict())
    d.update(extra)
    return d


def _levels(settings: BenchSettings, mode: str) -> list[int]:
    return settings.stream_concurrency if (mode == "stream" and settings.stream_concurrency) else settings.concurrency


def _measure(spec: LoadSpec, server_pid: Optional[int], settings: BenchSettings, progress: Progress,
             profile: bool = True):
    """run_load, with the CPU split (server / clients / others) and optionally py-spy over the measured window."""
    usage_meter = environment.WindowCpu(server_pid)
    sampler = Sampler(server_pid, settings.duration_s) if (profile and settings.profile and server_pid) else None

    def on_start() -> None:
        usage_meter.start(settings.warmup_s, settings.duration_s)
        if sampler is not None:
            sampler.start(settings.warmup_s)

    res = run_load(spec, progress, on_start=on_start)
    return res, usage_meter.wait(), (sampler.wait() if sampler else None)


def _cores(usage: dict) -> str:
    if not usage:
        return "-"
    return (f"server {usage['server_cores']}, clients {usage['client_cores']}, "
            f"others {usage['others_pct']}% of all")


def _daemon_points(label: str, address: str, payloads: dict[str, Payload], settings: BenchSettings,
                   window: int, loop: str, progress: Progress, notes: list[str],
                   daemon_pid: Optional[int] = None) -> list[dict]:
    points = []
    for name, payload in payloads.items():
        for mode in settings.modes:
            for c in _levels(settings, mode):
                spec = LoadSpec(address=address, method=INFER_METHOD if mode == "unary" else STREAM_METHOD,
                                mode=mode, requests=payload.requests, concurrency=c,
                                duration_s=settings.duration_s, warmup_s=settings.warmup_s,
                                stream_window=window, processes=settings.client_processes, loop=loop,
                                response_kind="infer" if mode == "unary" else "stream",
                                label=f"{label} daemon {name} {mode} c={c}")
                res, usage, profile = _measure(spec, daemon_pid, settings, progress)
                progress(f"[bench] {spec.label}: {res.summary.throughput:.1f}/s P50 {res.summary.p50_ms or 0:.2f} ms "
                         f"errors {res.summary.errors}; cores: {_cores(usage)}")
                if res.first_errors:
                    notes.append(f"{spec.label}: first errors: {'; '.join(res.first_errors[:2])}")
                # Images in flight: what a closed loop's throughput follows (see ceiling.py), and
                # what a stream point's ceiling is matched on.
                points.append(_point(label, "daemon", name, mode, c, res.summary, cpu=usage,
                                     in_flight=c * window if mode == "stream" else c,
                                     other_cpu_pct=usage.get("others_pct"),
                                     request_bytes=res.request_bytes,
                                     response_bytes=res.response_bytes, processes=res.processes,
                                     server_timing_us=res.server_timing_us, first_errors=res.first_errors,
                                     profile=profile))
    return points


def default_ceiling_pools(workers: int) -> list[int]:
    """Preprocessing pools a batched ceiling tries when none are named: [server] workers and one per core.

    The ceiling is what this machine can do with the model, not what one config
    allows: on the H100 (session 4) a 5-thread pool gave 2,511-2,594 img/s and an
    8-thread pool 3,194-3,343 for the same runner, so a config with few workers per
    process would otherwise be judged against a ceiling it made weaker itself.
    """
    return sorted({max(1, workers), os.cpu_count() or workers})


def default_ceiling_models(model: ModelConfig) -> list[ModelConfig]:
    """The model as configured and, when it allows fewer concurrent runtime calls than the backends'
    default ([onnxruntime] / [tensorrt] instances), also with the default: a batched ceiling tries both.

    Same reason as default_ceiling_pools, on another axis: on the H100 (session 5) a config with one
    ORT instance had a ceiling of 2,381-2,450 img/s against 3,302-3,583 with the default two, and its
    daemon "passed" against the weaker one.
    """
    raised = copy.deepcopy(model)
    changed = False
    for table, default in (("onnxruntime", OnnxRuntimeConfig().instances), ("tensorrt", TensorRTConfig().instances)):
        sub = getattr(raised, table)
        if sub.instances < default:
            sub.instances, changed = default, True
    return [model, raised] if changed else [model]


def _ceiling_points(label: str, config: Config, payloads: dict[str, Payload], settings: BenchSettings,
                    progress: Progress) -> tuple[list[dict], dict[str, str]]:
    points, served = [], {}
    workers = config.server.workers
    variants: list[tuple[list[int], Optional[int]]] = [(settings.concurrency, None)]
    above = [c for c in settings.concurrency if c > workers]
    if settings.ceiling_at_workers and above:
        variants.append((above, workers))
    pools = sorted(set(settings.ceiling_pools)) or default_ceiling_pools(workers)
    for name, payload in payloads.items():
        models = default_ceiling_models(config.model(name))
        for batch in settings.ceiling_batches:
            # A batch > 1 ceiling sets its own threads (concurrency // batch): no capped variant,
            # but one point per preprocessing pool size and runtime instance count.
            runs = [(lv, cap, None, models[0]) for lv, cap in variants] if batch == 1 else \
                [(variants[0][0], None, pool, m) for pool in pools for m in models]
            for levels, cap, pool, model_cfg in runs:
                spec = CeilingSpec(model=model_cfg, server=config.server, cache_dir=config.cache.dir,
                                   requests=payload.requests, concurrency=levels, duration_s=settings.duration_s,
                                   warmup_s=settings.warmup_s, batch=batch, label=f"{label} {name}",
                                   threads_cap=cap, pool=pool)
                with environment.CpuShare() as share:
                    device, pts = run_ceiling(spec)
                served[name] = device
                for p in pts:
                    progress(f"[bench] {label} ceiling {name} c={p.concurrency} threads={p.threads} batch={batch}"
                             + (f" pool={p.pool}" if batch > 1 else "") + ": "
                             f"{p.summary.throughput:.1f}/s P50 {p.summary.p50_ms or 0:.2f} ms")
                    # The share covers the whole ceiling run (model load and every concurrency).
                    how = f"in-process, {p.threads} threads" + (
                        f" x batch {batch}, preprocessing on {p.pool} threads" if batch > 1 else "")
                    if len(models) > 1 and batch > 1:
                        how += ", configured runtime instances" if model_cfg is models[0] else \
                            ", default runtime instances"
                    d = _point(label, "ceiling", name, how, p.concurrency, p.summary,
                               other_cpu_pct=share.other_pct, request_bytes=payload.mean_bytes,
                               stage_us=p.stage_us, threads=p.threads, pool=p.pool)
                    d["batch"] = batch
                    points.append(d)
    return points, served


def _echo_points(label: str, payloads: dict[str, Payload], daemon_points: list[dict], settings: BenchSettings,
                 window: int, loop: str, progress: Progress) -> list[dict]:
    points = []
    with EchoServer(loop=loop) as echo:
        for name, payload in payloads.items():
            for mode in settings.modes:
                sizes = [p["response_bytes"] for p in daemon_points
                         if p["model"] == name and p["mode"] == mode and p["response_bytes"]]
                resp = int(sum(sizes) / len(sizes)) if sizes else 256
                for c in settings.echo_concurrency:
                    method = unary_method(resp) if mode == "unary" else stream_method(resp)
                    spec = LoadSpec(address=echo.address, method=method,
                                    mode=mode, requests=payload.requests, concurrency=c,
                                    duration_s=settings.duration_s, warmup_s=settings.warmup_s,
                                    stream_window=window, processes=settings.client_processes, loop=loop,
                                    response_kind="none", label=f"{label} echo ({name} sizes) {mode} c={c}")
                    res, usage, _ = _measure(spec, echo.pid, settings, progress, profile=False)
                    progress(f"[bench] {spec.label}: {res.summary.throughput:.1f}/s "
                             f"P50 {res.summary.p50_ms or 0:.3f} ms; cores: {_cores(usage)}")
                    points.append(_point(label, "echo", name, mode, c, res.summary, cpu=usage,
                                         other_cpu_pct=usage.get("others_pct"),
                                         request_bytes=res.request_bytes,
                                         response_bytes=res.response_bytes, processes=res.processes))
    return points


def _model_names(config: Optional[Config], settings: BenchSettings, served: list[str]) -> list[str]:
    if settings.models:
        names = list(settings.models)
    elif config is not None:
        names = [m.name for m in config.models]
    else:
        names = list(served)
    if settings.trivial and TRIVIAL not in names and (config is not None or TRIVIAL in served):
        names.append(TRIVIAL)
    return names


def _served_models(address: str) -> list[str]:
    from edgeinfer_client import Client

    with Client(address, timeout=10) as c:
        return [m.name for m in c.list_models() if m.state == "ready"]


def run_benchmark(settings: BenchSettings, progress: Progress = _stderr) -> dict:
    """Run every configured measurement and return the results dict (see report.py for its use)."""
    work_dir = Path(settings.work_dir or tempfile.mkdtemp(prefix="edgeinfer-bench-"))
    image_paths = find_images(settings.images)
    results = {
        "schema": "edgeinfer-bench/1",
        "title": settings.title,
        "command": settings.command,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment.describe(),
        "settings": {"concurrency": settings.concurrency, "modes": settings.modes, "duration_s": settings.duration_s,
                     "stream_concurrency": settings.stream_concurrency or settings.concurrency,
                     "warmup_s": settings.warmup_s, "payload": settings.payload,
                     "loop": sorted({resolve(r.loop or settings.loop) for r in settings.runs}),
                     "stream_window": settings.stream_window or "daemon's",
                     "client_processes": settings.client_processes,
                     "ceiling_batches": settings.ceiling_batches, "ceiling_pools": settings.ceiling_pools,
                     "echo_concurrency": settings.echo_concurrency,
                     "images": [str(p) for p in image_paths]},
        "runs": [], "echo": [], "ratios": [], "targets": [], "notes": [],
    }
    rounds = max(1, settings.rounds)
    results["settings"]["rounds"] = rounds
    for k in range(rounds):
        for rs in settings.runs:
            label = rs.label if rounds == 1 else f"{rs.label}#{k + 1}"
            if rounds > 1:
                progress(f"[bench] round {k + 1}/{rounds}: {rs.label}")
            _one_run(dataclasses.replace(rs, label=label), settings, work_dir, image_paths, results, progress)
    if rounds > 1:
        results["median_targets"] = analysis.median_targets(results["targets"], rounds)
    return results


def _one_run(rs: RunSpec, settings: BenchSettings, work_dir: Path, image_paths, results: dict,
             progress: Progress) -> None:
    """Measure one run (daemon, ceiling, echo) and add its points, ratios and targets to `results`."""
    notes = results["notes"]
    loop = resolve(rs.loop or settings.loop)
    config = _with_trivial(rs.config, work_dir) if (rs.config is not None and settings.trivial) else rs.config
    served = _served_models(rs.address) if rs.address else []
    names = _model_names(config, settings, served)
    window = settings.stream_window or (config.server.stream_window if config else 16)
    payloads: dict[str, Payload] = {}
    model_info: dict[str, dict] = {}
    for name in names:
        mcfg = config.model(name) if config is not None and name in [m.name for m in config.models] else None
        if mcfg is None and name == TRIVIAL:
            mcfg = trivial_model_config(Path("trivial.onnx"))
        if mcfg is None:
            notes.append(f"{rs.label}: model {name!r} has no config here; benchmarked as an image model")
            payloads[name] = image_payload(name, image_paths, settings.payload)
            model_info[name] = {"payload": payloads[name].description}
            continue
        p = _payload_for(mcfg, settings, image_paths)
        if p is None:
            notes.append(f"{rs.label}: model {name!r} takes tensors of unknown meaning; skipped")
            continue
        payloads[name] = p
        model_info[name] = {"payload": p.description, "request_bytes": p.mean_bytes,
                            "config": dataclasses.asdict(mcfg)}
    if settings.profile and rs.address:
        notes.append(f"{rs.label}: --profile samples only a daemon the bench started")
    run = {"label": rs.label, "loop": loop, "config_source": config.source if config else "-",
           "server": dataclasses.asdict(config.server) if config else {}, "models": model_info, "points": []}
    if rs.address:
        run["daemon"] = f"already running at {rs.address}"
        run["points"] += _daemon_points(rs.label, rs.address, payloads, settings, window, loop, progress, notes)
    else:
        progress(f"[bench] {rs.label}: starting the daemon ({', '.join(payloads)}), event loop {loop}")
        with DaemonProcess(config, loop=loop, metrics=settings.daemon_metrics) as daemon:
            for name, (state, reason, device) in daemon.model_states.items():
                if name in model_info:
                    model_info[name]["served_on"] = device or reason
                if state != "ready" and name in payloads:
                    notes.append(f"{rs.label}: model {name} is {state}: {reason}; skipped")
                    payloads.pop(name)
            run["daemon"] = f"started by the bench (pid {daemon.pid}, loop {loop})"
            run["points"] += _daemon_points(rs.label, daemon.address, payloads, settings, window, loop, progress,
                                            notes, daemon_pid=daemon.pid)
    if settings.ceiling and config is not None:
        pts, served_on = _ceiling_points(rs.label, config, payloads, settings, progress)
        run["points"] += pts
        for name, dev in served_on.items():
            model_info[name].setdefault("served_on", dev)
            model_info[name]["ceiling_on"] = dev
    elif settings.ceiling:
        notes.append(f"{rs.label}: no --config, so no in-process ceiling")
    if settings.echo:
        results["echo"] += _echo_points(rs.label, payloads, run["points"], settings, window, loop, progress)
    results["runs"].append(run)
    ratios = analysis.compute_ratios(run, [p for p in results["echo"] if p["run"] == rs.label])
    results["ratios"] += ratios
    targets = settings.targets(run)
    results["targets"] += [t.as_dict() for t in analysis.evaluate(targets, ratios, rs.label)]
