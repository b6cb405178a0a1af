"""One benchmark session: daemon points, ceilings, echo floor, ratios, targets.

Order inside a run: the daemon is started (or reached at --address) and every
model/mode/concurrency point is driven through it; then the daemon stops and
the ceiling loads each model in a fresh process; the echo floor comes last,
with the message sizes the daemon actually sent and answered. Nothing runs
concurrently with a measured point except that point's own processes.

With `interleave` (and rounds), the order is point by point instead: daemon,
ceiling and echo all stay loaded, idle but for the one being measured, and
each round of a point is one short slice of each, back to back. Ratios of a
noisy machine then compare slices seconds apart, not minutes
(_interleaved_runs).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as _dt
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from edgeinfer.config import Config, ModelConfig, OnnxRuntimeConfig, TensorRTConfig
from edgeinfer_bench import analysis, environment
from edgeinfer_bench.ceiling import CeilingProcess, CeilingSpec
from edgeinfer_bench.daemon_proc import DaemonProcess
from edgeinfer_bench.echo import STREAM, UNARY, EchoServer
from edgeinfer_bench.loadgen import INFER_METHOD, STREAM_METHOD, ClientLayout, LoadClients, LoadSpec
from edgeinfer.process.eventloop import resolve
from edgeinfer_bench.placement import ANYWHERE, Placement
from edgeinfer_bench.profile import Sampler
from edgeinfer_bench.trivial import NAME as TRIVIAL, WIDTH as TRIVIAL_WIDTH, build_trivial_onnx, trivial_model_config
from edgeinfer_bench.workload import Payload, find_images, image_payload, tensor_payload

Progress = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class RunSpec:
    """One configuration to measure: a config (to start a daemon and the ceiling) and/or an address."""

    label: str
    config: Optional[Config] = None
    address: Optional[str] = None  # a daemon already running: not started, not stopped
    pid: Optional[int] = None      # with `address`: its process, so its CPU is measured too
    loop: Optional[str] = None     # event loop of this run's daemon/echo/clients (None: the settings')
    placement: Optional[Placement] = None  # CPUs of its servers and clients (None: the settings')
    clients: Optional[ClientLayout] = None  # its load generator's processes and channels (None: the settings')


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
    # Interleave the rounds point by point instead (see _interleaved_runs): daemons, ceiling and echo
    # stay loaded, and each round of a point is one short slice of each, back to back, so the
    # machine's drift falls on both sides of a ratio. Durations are then per slice.
    interleave: bool = False
    echo_concurrency: list[int] = field(default_factory=lambda: [1, 8])
    stream_window: int = 0        # 0: the daemon's [server] stream_window
    client_processes: int = 0     # 0: min(concurrency, CPUs)
    client_channels: str = "process"  # "process": the clients of a process share a connection; "slot": one each
    loop: str = "asyncio"
    # The load generator's CPUs apart from the servers' (bench/placement.py); default: all anywhere.
    placement: Placement = ANYWHERE
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
    """One point on a fresh set of client processes (see _measure_slice)."""
    with LoadClients(spec) as clients:
        return _measure_slice(clients, server_pid, settings, progress, profile)


def _measure_slice(clients: LoadClients, server_pid: Optional[int], settings: BenchSettings, progress: Progress,
                   profile: bool = True):
    """One slice of load, with the CPU split (server / clients / others) and optionally py-spy over its window."""
    usage_meter = environment.WindowCpu(server_pid)
    sampler = Sampler(server_pid, settings.duration_s) if (profile and settings.profile and server_pid) else None

    def on_start() -> None:
        usage_meter.start(settings.warmup_s, settings.duration_s)
        if sampler is not None:
            sampler.start(settings.warmup_s)

    res = clients.run_slice(progress=progress, on_start=on_start)
    return res, usage_meter.wait(), (sampler.wait() if sampler else None)


def _cores(usage: dict) -> str:
    if not usage:
        return "-"
    return (f"server {usage['server_cores']}, clients {usage['client_cores']}, "
            f"others {usage['others_pct']}% of all")


def _daemon_spec(label: str, address: str, name: str, mode: str, c: int, settings: BenchSettings,
                 prep: _Prepared) -> LoadSpec:
    return LoadSpec(address=address, method=INFER_METHOD if mode == "unary" else STREAM_METHOD,
                    mode=mode, requests=prep.payloads[name].requests, concurrency=c,
                    duration_s=settings.duration_s, warmup_s=settings.warmup_s,
                    stream_window=prep.window, processes=prep.clients.processes, loop=prep.loop,
                    response_kind="infer" if mode == "unary" else "stream",
                    label=f"{label} daemon {name} {mode} c={c}", cpus=prep.placement.clients,
                    channels=prep.clients.channels)


def _daemon_point(label: str, name: str, spec: LoadSpec, measured, progress: Progress, notes: list[str],
                  **extra) -> dict:
    res, usage, profile = measured
    progress(f"[bench] {spec.label}: {res.summary.throughput:.1f}/s P50 {res.summary.p50_ms or 0:.2f} ms "
             f"errors {res.summary.errors}; cores: {_cores(usage)}")
    if res.first_errors:
        notes.append(f"{spec.label}: first errors: {'; '.join(res.first_errors[:2])}")
    # Images in flight: what a closed loop's throughput follows (see ceiling.py), and
    # what a stream point's ceiling is matched on.
    c = spec.concurrency
    return _point(label, "daemon", name, spec.mode, c, res.summary, cpu=usage,
                  in_flight=c * spec.stream_window if spec.mode == "stream" else c,
                  other_cpu_pct=usage.get("others_pct"), steal_pct=usage.get("steal_pct"),
                  request_bytes=res.request_bytes,
                  response_bytes=res.response_bytes, processes=res.processes,
                  server_timing_us=res.server_timing_us, first_errors=res.first_errors,
                  profile=profile, **extra)


def _daemon_points(label: str, address: str, settings: BenchSettings, prep: _Prepared, progress: Progress,
                   notes: list[str], daemon_pid: Optional[int] = None) -> list[dict]:
    points = []
    for name in prep.payloads:
        for mode in settings.modes:
            for c in _levels(settings, mode):
                spec = _daemon_spec(label, address, name, mode, c, settings, prep)
                points.append(_daemon_point(label, name, spec, _measure(spec, daemon_pid, settings, progress),
                                            progress, notes))
    return points


def default_ceiling_pools(workers: int) -> list[int]:
    """Preprocessing pools a batched ceiling tries when none are named: [server] workers and one per core.

    The ceiling is what this machine can do with the model, not what one config
    allows: on the H100 a 5-thread pool gave 2,511-2,594 img/s and an
    8-thread pool 3,194-3,343 for the same runner, so a config with few workers per
    process would otherwise be judged against a ceiling it made weaker itself.
    """
    return sorted({max(1, workers), os.cpu_count() or workers})


def default_ceiling_models(model: ModelConfig) -> list[ModelConfig]:
    """The model as configured and, when it allows fewer concurrent runtime calls than the backends'
    default ([onnxruntime] / [tensorrt] instances), also with the default: a batched ceiling tries both.

    Same reason as default_ceiling_pools, on another axis: on the H100 a config with one
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


@dataclass
class _CeilingJob:
    """One way the ceiling is measured; the best job at a concurrency is the ceiling there."""

    config: Config              # the run's config ([server], [cache])
    model: ModelConfig          # as configured, or with the backends' default runtime instances
    batch: int
    threads_cap: Optional[int]  # batch 1: at most this many threads ([server] workers)
    pool: Optional[int]         # batch > 1: preprocessing threads
    levels: list[int]           # the client concurrencies it stands for
    note: str = ""              # which runtime instance count, where the batched ceiling tries two
    cpus: frozenset = frozenset()  # where the ceiling process runs: the run's server CPUs


def _ceiling_jobs(config: Config, name: str, settings: BenchSettings, levels: list[int],
                  cpus: frozenset = frozenset()) -> list[_CeilingJob]:
    """Every ceiling variant for `name` at `levels`: batch 1 (also capped at [server] workers where clients
    outnumber them) and each batch > 1 with every preprocessing pool and runtime instance count.
    `cpus`: the run's server CPUs, which its ceiling runs on too."""
    workers = config.server.workers
    pools = sorted(set(settings.ceiling_pools)) or default_ceiling_pools(workers)
    models = default_ceiling_models(config.model(name))
    notes = ["", ""] if len(models) == 1 else [", configured runtime instances", ", default runtime instances"]
    jobs = []
    for batch in settings.ceiling_batches:
        if batch == 1:
            jobs.append(_CeilingJob(config, models[0], 1, None, None, list(levels), cpus=cpus))
            above = [c for c in levels if c > workers]
            if settings.ceiling_at_workers and above:
                jobs.append(_CeilingJob(config, models[0], 1, workers, None, above, cpus=cpus))
        else:
            jobs += [_CeilingJob(config, m, batch, None, pool, list(levels), note, cpus)
                     for pool in pools for m, note in zip(models, notes)]
    return jobs


class _Ceilings:
    """Loaded CeilingProcesses of one model: one per distinct model config, [server] cuda_sync and set of
    server CPUs, started when first needed.

    Runs that configure the model alike share one process (the interleaved bench measures
    such a job once per round for all of them).
    """

    def __init__(self, name: str, payload: Payload, settings: BenchSettings):
        self.name, self.payload, self.settings = name, payload, settings
        self.devices: dict[int, str] = {}
        self._models: list[tuple[ModelConfig, str, frozenset]] = []
        self._stack = contextlib.ExitStack()
        self._procs: dict[int, CeilingProcess] = {}

    def __enter__(self) -> "_Ceilings":
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def _index(self, model: ModelConfig, config: Config, cpus: frozenset) -> int:
        # The process-wide setting a ceiling process takes from its run's [server] table
        # (how threads wait for the GPU) makes it a different ceiling too, as do the CPUs it may use.
        wanted = (model, config.server.cuda_sync, cpus)
        for k, m in enumerate(self._models):
            if m == wanted:
                return k
        self._models.append(wanted)
        return len(self._models) - 1

    def key(self, job: _CeilingJob) -> tuple:
        """Jobs with equal keys measure the same thing."""
        return self._index(job.model, job.config, job.cpus), job.batch, job.threads_cap, job.pool

    def device(self, config: Config, cpus: frozenset = frozenset()) -> str:
        """What runs the ceiling of this model in `config` ("" until it is loaded)."""
        return self.devices.get(self._index(config.model(self.name), config, cpus), "")

    def measure(self, job: _CeilingJob, concurrency: int, label: str, progress: Progress, quiet: bool = False,
                **extra) -> dict:
        """One ceiling point of `job` at `concurrency`, as a result row of run `label`."""
        k = self._index(job.model, job.config, job.cpus)
        if k not in self._procs:
            cfg = job.config
            spec = CeilingSpec(model=job.model, server=cfg.server, cache_dir=cfg.cache.dir,
                               requests=self.payload.requests, concurrency=[], duration_s=self.settings.duration_s,
                               warmup_s=self.settings.warmup_s, label=f"{label} {self.name}")
            self._procs[k] = self._stack.enter_context(CeilingProcess(spec, cpus=job.cpus))
            self.devices[k] = self._procs[k].device
        batch = job.batch
        with environment.CpuShare() as share:
            p = self._procs[k].point(concurrency, batch, job.threads_cap, job.pool, quiet=quiet)
        progress(f"[bench] {label} ceiling {self.name} c={p.concurrency} threads={p.threads} batch={batch}"
                 + (f" pool={p.pool}" if batch > 1 else "") + ": "
                 f"{p.summary.throughput:.1f}/s P50 {p.summary.p50_ms or 0:.2f} ms")
        how = f"in-process, {p.threads} threads" + (
            f" x batch {batch}, preprocessing on {p.pool} threads" if batch > 1 else "")
        if batch > 1:
            how += job.note
        d = _point(label, "ceiling", self.name, how, p.concurrency, p.summary,
                   other_cpu_pct=share.other_pct, steal_pct=share.steal_pct, request_bytes=self.payload.mean_bytes,
                   stage_us=p.stage_us, threads=p.threads, pool=p.pool, **extra)
        d["batch"] = batch
        return d


def _ceiling_points(label: str, config: Config, payloads: dict[str, Payload], settings: BenchSettings,
                    progress: Progress, cpus: frozenset = frozenset()) -> tuple[list[dict], dict[str, str]]:
    points, served = [], {}
    for name, payload in payloads.items():
        with _Ceilings(name, payload, settings) as ceilings:
            jobs = _ceiling_jobs(config, name, settings, settings.concurrency, cpus)
            for job in jobs:
                points += [ceilings.measure(job, c, label, progress) for c in job.levels]
            served[name] = ceilings.device(config, cpus)
    return points, served


def _echo_spec(label: str, address: str, name: str, mode: str, c: int, settings: BenchSettings,
               prep: _Prepared) -> LoadSpec:
    """Load on the echo with `name`'s requests; set its answers' size (EchoServer.respond_with) first."""
    return LoadSpec(address=address, method=UNARY if mode == "unary" else STREAM, mode=mode,
                    requests=prep.payloads[name].requests, concurrency=c, duration_s=settings.duration_s,
                    warmup_s=settings.warmup_s, stream_window=prep.window, processes=prep.clients.processes,
                    loop=prep.loop, response_kind="none", label=f"{label} echo ({name} sizes) {mode} c={c}",
                    cpus=prep.placement.clients, channels=prep.clients.channels)


def _echo_point(label: str, name: str, spec: LoadSpec, measured, progress: Progress, **extra) -> dict:
    res, usage, _ = measured
    progress(f"[bench] {spec.label}: {res.summary.throughput:.1f}/s "
             f"P50 {res.summary.p50_ms or 0:.3f} ms; cores: {_cores(usage)}")
    return _point(label, "echo", name, spec.mode, spec.concurrency, res.summary, cpu=usage,
                  other_cpu_pct=usage.get("others_pct"), steal_pct=usage.get("steal_pct"),
                  request_bytes=res.request_bytes,
                  response_bytes=res.response_bytes, processes=res.processes, **extra)


def _echo_points(label: str, daemon_points: list[dict], settings: BenchSettings, prep: _Prepared,
                 progress: Progress) -> list[dict]:
    points = []
    with EchoServer(loop=prep.loop, cpus=prep.placement.server) as echo:
        for name in prep.payloads:
            for mode in settings.modes:
                sizes = [p["response_bytes"] for p in daemon_points
                         if p["model"] == name and p["mode"] == mode and p["response_bytes"]]
                echo.respond_with(int(sum(sizes) / len(sizes)) if sizes else 256)
                for c in settings.echo_concurrency:
                    spec = _echo_spec(label, echo.address, name, mode, c, settings, prep)
                    points.append(_echo_point(label, name, spec,
                                              _measure(spec, echo.pid, settings, progress, profile=False), progress))
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
                     "client_processes": settings.client_processes, "client_channels": settings.client_channels,
                     "ceiling_batches": settings.ceiling_batches, "ceiling_pools": settings.ceiling_pools,
                     "echo_concurrency": settings.echo_concurrency,
                     "images": [str(p) for p in image_paths]},
        "runs": [], "echo": [], "ratios": [], "targets": [], "notes": [],
    }
    rounds = max(1, settings.rounds)
    results["settings"]["rounds"] = rounds
    results["settings"]["interleave"] = settings.interleave
    if settings.interleave:
        _interleaved_runs(settings.runs, settings, work_dir, image_paths, results, progress)
    for k in range(0 if settings.interleave else rounds):
        for rs in settings.runs:
            label = rs.label if rounds == 1 else f"{rs.label}#{k + 1}"
            if rounds > 1:
                progress(f"[bench] round {k + 1}/{rounds}: {rs.label}")
            _one_run(dataclasses.replace(rs, label=label), settings, work_dir, image_paths, results, progress)
    if rounds > 1:
        results["median_targets"] = analysis.median_targets(results["targets"], rounds)
        if len(settings.runs) > 1:
            results["paired"] = analysis.paired_differences(results["targets"])
    return results


@dataclass
class _Prepared:
    """What a run measures: its event loop, config (with the trivial model), payloads and model notes."""

    loop: str
    config: Optional[Config]
    payloads: dict[str, Payload]
    model_info: dict[str, dict]
    window: int
    placement: Placement = ANYWHERE
    clients: ClientLayout = ClientLayout()


def _prepare(rs: RunSpec, settings: BenchSettings, work_dir: Path, image_paths, notes: list[str]) -> _Prepared:
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
    return _Prepared(loop, config, payloads, model_info, window, rs.placement or settings.placement,
                     rs.clients or ClientLayout(settings.client_processes, settings.client_channels))


def _new_run(label: str, prep: _Prepared) -> dict:
    config = prep.config
    return {"label": label, "loop": prep.loop, "cpus": prep.placement.describe(), "clients": prep.clients.describe(),
            "config_source": config.source if config else "-",
            "server": dataclasses.asdict(config.server) if config else {}, "models": prep.model_info, "points": []}


def _drop_unready(daemon: DaemonProcess, prep: _Prepared, label: str, notes: list[str]) -> None:
    """Note where each model is served; models that did not load are not measured."""
    for name, (state, reason, device) in daemon.model_states.items():
        if name in prep.model_info:
            prep.model_info[name]["served_on"] = device or reason
        if state != "ready" and name in prep.payloads:
            notes.append(f"{label}: model {name} is {state}: {reason}; skipped")
            prep.payloads.pop(name)


def _reach_daemon(rs: RunSpec, prep: _Prepared, settings: BenchSettings, stack: contextlib.ExitStack,
                  progress: Progress, notes: list[str]) -> tuple[str, Optional[int], str]:
    """The run's daemon: the one at --address, or one started here and stopped with `stack`.

    Returns (address, pid or None, how it runs, for the report).
    """
    if rs.address:
        return rs.address, rs.pid, f"already running at {rs.address}" + (f" (pid {rs.pid})" if rs.pid else "")
    progress(f"[bench] {rs.label}: starting the daemon ({', '.join(prep.payloads)}), event loop {prep.loop}")
    daemon = stack.enter_context(DaemonProcess(prep.config, loop=prep.loop, metrics=settings.daemon_metrics,
                                               cpus=prep.placement.server))
    _drop_unready(daemon, prep, rs.label, notes)
    return daemon.address, daemon.pid, f"started by the bench (pid {daemon.pid}, loop {prep.loop})"


def _note_ceiling_device(prep: _Prepared, name: str, device: str) -> None:
    if device:
        prep.model_info[name].setdefault("served_on", device)
        prep.model_info[name]["ceiling_on"] = device


def _judge(run: dict, results: dict, settings: BenchSettings) -> None:
    """Add `run` with its ratios (against the echo points of the same label) and target verdicts."""
    results["runs"].append(run)
    ratios = analysis.compute_ratios(run, [p for p in results["echo"] if p["run"] == run["label"]])
    results["ratios"] += ratios
    targets = settings.targets(run)
    results["targets"] += [t.as_dict() for t in analysis.evaluate(targets, ratios, run["label"])]


def _one_run(rs: RunSpec, settings: BenchSettings, work_dir: Path, image_paths, results: dict,
             progress: Progress) -> None:
    """Measure one run (daemon, ceiling, echo) and add its points, ratios and targets to `results`."""
    notes = results["notes"]
    prep = _prepare(rs, settings, work_dir, image_paths, notes)
    config = prep.config
    run = _new_run(rs.label, prep)
    with contextlib.ExitStack() as stack:
        address, pid, run["daemon"] = _reach_daemon(rs, prep, settings, stack, progress, notes)
        run["points"] += _daemon_points(rs.label, address, settings, prep, progress, notes, daemon_pid=pid)
    if settings.ceiling and config is not None:
        pts, served_on = _ceiling_points(rs.label, config, prep.payloads, settings, progress, prep.placement.server)
        run["points"] += pts
        for name, dev in served_on.items():
            _note_ceiling_device(prep, name, dev)
    elif settings.ceiling:
        notes.append(f"{rs.label}: no --config, so no in-process ceiling")
    if settings.echo:
        results["echo"] += _echo_points(rs.label, run["points"], settings, prep, progress)
    _judge(run, results, settings)


@dataclass
class _Interleaved:
    """One run of an interleaved benchmark: its daemon, its rounds' results and its echo server."""

    spec: RunSpec
    prep: _Prepared
    rounds: list[dict]                 # the run dict of each round ("<label>#k")
    echoes: list[list[dict]]           # echo points of each round
    address: str = ""
    pid: Optional[int] = None
    echo: Optional[EchoServer] = None


def _interleaved_runs(specs: list[RunSpec], settings: BenchSettings, work_dir: Path, image_paths, results: dict,
                      progress: Progress) -> None:
    """Every round of every run, interleaved point by point.

    Every run's daemon (or the one at its --address), an echo server per event loop and set of server CPUs
    and each model's ceiling processes are started once and stay loaded, idle but for
    the one being measured; each daemon point keeps its client processes connected.
    For every (model, mode, concurrency), round k measures one slice of each run's
    daemon, then the ceiling (every job at the daemon's images in flight, once for
    runs that configure the model alike) and the echo, and odd rounds go in the
    reverse order. A drift of the machine during the point then falls on both sides
    of each ratio, and on each run of an A/B alike. Each round's points form the run
    "<label>#k", judged as a sequential round is; a point's ratios use only the
    ceiling measured in the same round of the same point (its "pair"). The echo is
    measured at the daemon's concurrencies that are also in `echo_concurrency`.
    """
    notes = results["notes"]
    rounds = max(1, settings.rounds)
    entries = []
    for rs in specs:
        prep = _prepare(rs, settings, work_dir, image_paths, notes)
        labels = [f"{rs.label}#{k + 1}" if rounds > 1 else rs.label for k in range(rounds)]
        entries.append(_Interleaved(rs, prep, [_new_run(label, prep) for label in labels],
                                    [[] for _ in range(rounds)]))
    with contextlib.ExitStack() as stack:
        echo_servers: dict[tuple, EchoServer] = {}
        for e in entries:
            rs, prep = e.spec, e.prep
            e.address, e.pid, how = _reach_daemon(rs, prep, settings, stack, progress, notes)
            for run in e.rounds:
                run["daemon"] = how + f"; interleaved with {len(entries) - 1} other run(s), point by point, " \
                                      f"{rounds} slices each"
            if settings.echo:
                where = (prep.loop, prep.placement.server)
                if where not in echo_servers:
                    echo_servers[where] = stack.enter_context(EchoServer(loop=prep.loop, cpus=prep.placement.server))
                e.echo = echo_servers[where]
            if settings.ceiling and prep.config is None:
                notes.append(f"{rs.label}: no --config, so no in-process ceiling")
        names = list(dict.fromkeys(name for e in entries for name in e.prep.payloads))
        for name in names:
            here = [e for e in entries if name in e.prep.payloads]
            with _Ceilings(name, here[0].prep.payloads[name], settings) as ceilings:
                for mode in settings.modes:
                    for c in _levels(settings, mode):
                        _interleave_point(here, name, mode, c, settings, ceilings, progress, notes)
                for e in here:
                    if e.prep.config is not None:
                        _note_ceiling_device(e.prep, name, ceilings.device(e.prep.config, e.prep.placement.server))
    for k in range(rounds):
        for e in entries:
            results["echo"] += e.echoes[k]
            _judge(e.rounds[k], results, settings)


def _interleave_point(entries: list[_Interleaved], name: str, mode: str, c: int, settings: BenchSettings,
                      ceilings: _Ceilings, progress: Progress, notes: list[str]) -> None:
    """All rounds of one point for every run, each daemon slice next to the ceiling and echo slices."""
    pair = f"{mode} c={c}"
    quiet = lambda _line: None  # noqa: E731 - slices are short; only their results are printed
    # Ceiling jobs of every run at its images in flight; alike jobs are measured once for all.
    shared: dict[tuple, tuple[_CeilingJob, int, list[int]]] = {}
    for i, e in enumerate(entries):
        if not settings.ceiling or e.prep.config is None:
            continue
        in_flight = c * e.prep.window if mode == "stream" else c
        for job in _ceiling_jobs(e.prep.config, name, settings, [in_flight], e.prep.placement.server):
            shared.setdefault(ceilings.key(job) + (in_flight,), (job, in_flight, []))[2].append(i)
    steps = [("daemon", i) for i in range(len(entries))] + [("ceiling", key) for key in shared] + \
        [("echo", i) for i, e in enumerate(entries) if e.echo is not None and c in settings.echo_concurrency]
    labels = ", ".join(e.spec.label for e in entries)
    with contextlib.ExitStack() as stack:
        clients = []
        for e in entries:
            spec = _daemon_spec(e.spec.label, e.address, name, mode, c, settings, e.prep)
            clients.append(stack.enter_context(LoadClients(spec)))
        echo_clients: dict[int, tuple[LoadClients, int]] = {}  # entry -> its echo clients, answer size
        rounds = len(entries[0].rounds)
        for k in range(rounds):
            progress(f"[bench] round {k + 1}/{rounds}: {labels} {name} {pair}")
            for step, what in (steps if k % 2 == 0 else steps[::-1]):
                if step == "daemon":
                    e = entries[what]
                    measured = _measure_slice(clients[what], e.pid, settings, quiet)
                    e.rounds[k]["points"].append(_daemon_point(e.rounds[k]["label"], name, clients[what].spec,
                                                               measured, progress, notes, pair=pair))
                elif step == "ceiling":
                    job, in_flight, users = shared[what]
                    first = entries[users[0]].rounds[k]["label"]
                    point = ceilings.measure(job, in_flight, first, progress, quiet=True, pair=pair)
                    for i in users:
                        entries[i].rounds[k]["points"].append(dict(point, run=entries[i].rounds[k]["label"]))
                else:
                    e = entries[what]
                    if what not in echo_clients:  # round 1 measured the daemon first: its answers' size
                        sizes = [p["response_bytes"] for p in e.rounds[0]["points"]
                                 if p["target"] == "daemon" and p.get("pair") == pair and p["model"] == name]
                        espec = _echo_spec(e.spec.label, e.echo.address, name, mode, c, settings, e.prep)
                        echo_clients[what] = (stack.enter_context(LoadClients(espec)), sizes[0] or 256)
                    load, size = echo_clients[what]
                    e.echo.respond_with(size)  # runs may share one echo and differ in size
                    measured = _measure_slice(load, e.echo.pid, settings, quiet, profile=False)
                    e.echoes[k].append(_echo_point(e.rounds[k]["label"], name, load.spec, measured,
                                                   progress, pair=pair))
