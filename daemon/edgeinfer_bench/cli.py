"""`edgeinfer bench` (or `edgeinfer-bench`): argument parsing and the command itself.

`add_bench_parser` is this package's entry point in the `edgeinfer.commands`
group, through which the daemon's CLI offers `edgeinfer bench` without
importing this package; `main` is the stand-alone `edgeinfer-bench`.
Exit status: 0 measured (targets missed or not), 1 a measurement failed, 2 bad usage.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import shlex
import sys
from pathlib import Path

from edgeinfer.process.eventloop import LOOP_KINDS
from edgeinfer_bench.loadgen import CHANNELS
from edgeinfer_bench.workload import PAYLOAD_KINDS, default_image_dir


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("unary", "stream")]
    if not modes or bad:
        raise argparse.ArgumentTypeError(f"modes are unary and/or stream, got {text!r}")
    return modes


def _loops(text: str) -> list[str]:
    loops = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in loops if x not in LOOP_KINDS]
    if not loops or bad:
        raise argparse.ArgumentTypeError(f"event loops are {', '.join(LOOP_KINDS)}; got {text!r}")
    return loops


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `bench` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "bench", help="measure the daemon against its in-process ceiling and the bare gRPC floor",
        description="Drive a daemon (started here from --config, or already running at --address) with "
                    "client processes sending real photos, measure the same model in-process and a bare "
                    "grpc.aio echo server in the same run, and write Markdown, JSON and PNG reports.")
    p.add_argument("--config", action="append", default=[],
                   help="TOML config; repeat to compare configurations (each gets a daemon, a ceiling and an echo)")
    p.add_argument("--label", action="append", default=[],
                   help="name of each --config in the report (default: the file's stem)")
    p.add_argument("--address", help="benchmark a daemon already running here instead of starting one")
    p.add_argument("--models", default="", help="comma-separated model names (default: every configured model)")
    p.add_argument("--concurrency", type=_int_list, default=[1, 8, 32], help="e.g. 1,8,32")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each point")
    p.add_argument("--mode", type=_modes, default=["unary"], help="unary, stream or unary,stream")
    p.add_argument("--stream-concurrency", type=_int_list, default=[],
                   help="concurrent streams for InferStream points (default: --concurrency)")
    p.add_argument("--payload", choices=PAYLOAD_KINDS, default="jpeg",
                   help="photos as JPEG bytes (default) or raw RGB pixels")
    p.add_argument("--images", type=Path, default=None, help="folder of photos (default: assets/media)")
    p.add_argument("--no-trivial", action="store_true", help="skip the trivial transport model")
    p.add_argument("--no-ceiling", action="store_true", help="skip the in-process ceiling")
    p.add_argument("--no-echo", action="store_true", help="skip the bare echo floor")
    p.add_argument("--echo-concurrency", type=_int_list, default=[1, 8])
    p.add_argument("--ceiling-pools", type=_int_list, default=[],
                   help="batched ceiling: preprocessing pool sizes to try, the best counts "
                        "(default: [server] workers and one per CPU core)")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure every run this many times, alternating runs; targets use the median round")
    p.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=None,
                   help="keep daemon, ceiling and echo loaded and alternate one short slice of each per round, "
                        "point by point, so machine drift cancels in each ratio (--duration and --warmup are "
                        "then per slice); the default with --rounds > 1 (--no-interleave: whole runs in turn)")
    p.add_argument("--ceiling-batch", type=_int_list, default=[1],
                   help="batch sizes for the ceiling (best one counts), e.g. 1,8 for a batching daemon")
    p.add_argument("--stream-window", type=int, default=0,
                   help="frames in flight per stream (default: the daemon's [server] stream_window)")
    p.add_argument("--client-procs", type=int, default=0, help="load generator processes (default: min(conc, CPUs))")
    p.add_argument("--client-channels", choices=CHANNELS, default="process",
                   help="process: the clients of a load generator process share one connection; slot: each "
                        "client opens its own, as separate client programs would")
    p.add_argument("--client-cpus", type=_cpus, default=frozenset(), metavar="LIST",
                   help="CPUs of the load generator, e.g. 0-2 (default: anywhere); see --server-cpus")
    p.add_argument("--server-cpus", type=_cpus, default=frozenset(), metavar="LIST",
                   help="CPUs of the daemon, its ceiling and the echo server, e.g. 3-15 (default: anywhere). "
                        "With --client-cpus elsewhere, the clients no longer take the daemon's cores, as clients "
                        "on other machines would not (on the H100 the daemon did better sharing all cores)")
    p.add_argument("--loop", type=_loops, default=["asyncio"],
                   help="event loop for the daemon, the echo server and the clients: asyncio, uvloop or auto; "
                        "a list (asyncio,uvloop) measures each config once per loop")
    p.add_argument("--daemon-metrics", action="store_true", help="leave the daemon's metrics endpoint on")
    p.add_argument("--profile", action="store_true",
                   help="sample the daemon with py-spy during each daemon point (pip install py-spy)")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="output folder")
    p.add_argument("--name", default="", help="file stem of the report (default: bench-<UTC time>)")
    p.add_argument("--title", default="", help="report title")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--variants", choices=("precision", "decode", "backend"), default=None,
                   help="the before/after report: serve one model (--models NAME) once per variant along this "
                        "axis (precision: fp32,fp16,int8; decode: cpu,gpu; backend) and report latency at 1 "
                        "client, throughput at the largest --concurrency, memory, load time and the accuracy "
                        "gate's figures against fp32 for each")
    p.add_argument("--variant-values", default="",
                   help="the variants to measure, e.g. fp32,fp16 (default: every value of the axis)")
    p.set_defaults(func=cmd_bench)
    return p


def _cpus(text: str) -> frozenset[int]:
    from edgeinfer_bench.placement import parse_cpus

    try:
        return parse_cpus(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def interleaved(args) -> bool:
    """--interleave as given, else on whenever there are rounds to interleave. Why the default: whole
    runs in turn measured ratios to about +-0.08, interleaved slices to about +-0.015."""
    return args.interleave if args.interleave is not None else args.rounds > 1


def cmd_variants(args) -> int:
    """`edgeinfer bench --variants AXIS`: one model in several variants, one report (edgeinfer_bench/variants.py)."""
    from edgeinfer.config import load_config
    from edgeinfer.errors import ConfigError
    from edgeinfer_bench.variants import VariantSettings, parse_values, run_variants, summary_text, write_report

    models = [m for m in args.models.split(",") if m]
    if len(args.config) != 1 or args.address or len(models) != 1:
        print("edgeinfer bench --variants: give one --config and one model (--models NAME)", file=sys.stderr)
        return 2
    try:
        values = parse_values(args.variants, args.variant_values)
        config = load_config(args.config[0])
        config.model(models[0])
    except (ValueError, KeyError, ConfigError) as exc:
        print(f"edgeinfer bench --variants: {exc}", file=sys.stderr)
        return 2
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    settings = VariantSettings(
        config=config, model=models[0], axis=args.variants, values=values,
        images=args.images or default_image_dir(), saturating=max(args.concurrency),
        duration_s=args.duration, warmup_s=args.warmup, rounds=args.rounds, client_processes=args.client_procs,
        title=args.title,
        command="edgeinfer " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "edgeinfer bench")
    try:
        results = run_variants(settings)
    except (RuntimeError, FileNotFoundError, ValueError) as exc:
        print(f"edgeinfer bench: {exc}", file=sys.stderr)
        return 1
    paths = write_report(results, args.out, args.name or f"variants-{models[0]}-{stamp}", plots=not args.no_plots)
    print(summary_text(results))
    for kind, path in paths.items():
        print(f"{kind:>10}: {path}")
    return 0


def cmd_bench(args) -> int:
    from edgeinfer.config import load_config

    if args.variants:
        return cmd_variants(args)
    from edgeinfer_bench.report import write_report
    from edgeinfer_bench.placement import Placement
    from edgeinfer_bench.session import BenchSettings, RunSpec, run_benchmark

    if not args.config and not args.address:
        print("edgeinfer bench: give --config FILE (start a daemon) or --address HOST:PORT", file=sys.stderr)
        return 2
    if args.label and len(args.label) != len(args.config):
        print("edgeinfer bench: give one --label per --config", file=sys.stderr)
        return 2
    if args.address and len(args.config) > 1:
        print("edgeinfer bench: --address compares with one --config at most", file=sys.stderr)
        return 2
    try:
        placement = Placement(server=args.server_cpus, clients=args.client_cpus)
    except ValueError as exc:
        print(f"edgeinfer bench: {exc}", file=sys.stderr)
        return 2
    runs = []
    for i, path in enumerate(args.config or [None]):
        label = (args.label[i] if args.label else Path(path).stem) if path else "daemon"
        config = load_config(path) if path else None
        for loop in args.loop:
            runs.append(RunSpec(label=label if len(args.loop) == 1 else f"{label}-{loop}", config=config,
                                address=args.address, loop=loop))
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    stem = args.name or f"bench-{stamp}"
    settings = BenchSettings(
        runs=runs, images=args.images or default_image_dir(), concurrency=args.concurrency,
        stream_concurrency=args.stream_concurrency, modes=args.mode,
        duration_s=args.duration, warmup_s=args.warmup, payload=args.payload,
        models=[m for m in args.models.split(",") if m], trivial=not args.no_trivial,
        ceiling=not args.no_ceiling, ceiling_batches=args.ceiling_batch, echo=not args.no_echo,
        echo_concurrency=args.echo_concurrency, rounds=args.rounds, interleave=interleaved(args),
        ceiling_pools=args.ceiling_pools, stream_window=args.stream_window,
        client_processes=args.client_procs, loop=args.loop[0], daemon_metrics=args.daemon_metrics,
        placement=placement, client_channels=args.client_channels,
        profile=args.profile,
        title=args.title,
        command="edgeinfer " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "edgeinfer bench")
    try:
        results = run_benchmark(settings)
    except (RuntimeError, FileNotFoundError, ValueError) as exc:
        print(f"edgeinfer bench: {exc}", file=sys.stderr)
        return 1
    paths = write_report(results, args.out, stem, plots=not args.no_plots)
    print(summary_text(results))
    for kind, path in paths.items():
        print(f"{kind:>10}: {path}")
    return 0


def summary_text(results: dict) -> str:
    """The ratios and targets, short, for the terminal."""
    from edgeinfer_bench.report import interval_text

    lines = ["ratios (throughput, same run):"]
    for r in results["ratios"]:
        v = "-" if r["value"] is None else f"{r['value']:.3f}"
        lines.append(f"  {r['run']:<10} {r['model']:<10} {r['name']:<15} {r['mode']:<7} c={r['concurrency']:<3} {v}")
    if results.get("median_targets"):
        lines.append(f"targets, median of {results['settings']['rounds']} rounds:")
        for t in results["median_targets"]:
            verdict = "not measured" if t["passed"] is None else ("PASS" if t["passed"] else "MISS")
            value = "-" if t["median"] is None else f"{t['median']:.2f}"
            each = ", ".join(f"{v:.2f}" for v in t["values"])
            lines.append(f"  {verdict:<5} {t['run']}: {t['title']}: {value}, interval {interval_text(t)} "
                         f"[{each}] (goal {t['threshold']:.2f})")
    for d in results.get("paired", []):
        lines.append(f"  {d['run']} - {d['against']}: {d['title']}: median {d['median']:+.3f} "
                     f"({d['interval'][0]:+.3f} to {d['interval'][1]:+.3f}), ahead {d['wins']}/{len(d['differences'])}")
    if results["targets"]:
        lines.append("targets:")
        for t in results["targets"]:
            verdict = "not measured" if t["passed"] is None else ("PASS" if t["passed"] else "MISS")
            value = "-" if t["value"] is None else f"{t['value']:.2f}"
            lines.append(f"  {verdict:<5} {t['title']}: {value} (goal {t['threshold']:.2f})")
    return "\n".join(lines)


def main(argv=None) -> int:
    """`edgeinfer-bench ARGS`: the same command as `edgeinfer bench ARGS`."""
    import logging

    ap = argparse.ArgumentParser(prog="edgeinfer-bench")
    ap.add_argument("--log-level", default="warning")
    sub = ap.add_subparsers(dest="command")
    add_bench_parser(sub)
    args = ap.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
