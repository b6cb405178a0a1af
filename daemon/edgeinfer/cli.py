"""`edgeinfer` command line: serve | check-config | models | build | cache | bench | info.

Exit status: 0 success, 1 runtime failure, 2 bad usage or bad config.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

from edgeinfer import __version__
from edgeinfer.config import Config, load_config
from edgeinfer.errors import ConfigError

log = logging.getLogger("edgeinfer")


def _setup_logging(level: str) -> None:
    from edgeinfer.observe.journal import stderr_handler

    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[stderr_handler()])


def _load(path: str) -> Config:
    return load_config(path)


# -- commands -------------------------------------------------------------------

def cmd_serve(args) -> int:
    from edgeinfer.process import systemd
    from edgeinfer.process.daemon import Daemon

    def overrides(config: Config) -> Config:
        if args.listen:
            config.server.listen = args.listen
        return config

    config = overrides(_load(args.config))
    tick = systemd.watchdog_interval_s() or 1.0
    if config.server.supervised:
        from edgeinfer.process.supervisor import Supervisor

        supervisor = Supervisor(config, tick_s=min(tick, 1.0), config_path=args.config)
        try:
            supervisor.start()
        except OSError as exc:
            log.error("%s", exc)
            return 1
        return supervisor.run()

    async def main() -> None:
        daemon = Daemon(config, tick_s=min(tick, 1.0), config_path=args.config, config_overrides=overrides)
        await daemon.run()

    from edgeinfer.process.eventloop import run

    try:
        run(main(), config.server.event_loop)
    except ValueError as exc:  # uvloop asked for but not installed
        log.error("%s", exc)
        return 2
    except ConfigError as exc:  # e.g. a device index this machine does not have
        log.error("%s", exc)
        return 2
    except OSError as exc:
        log.error("%s", exc)
        return 1
    return 0


def cmd_check_config(args) -> int:
    from edgeinfer import platform
    from edgeinfer.config import check_devices

    config = _load(args.config)
    check_devices(config, platform.visible_gpu_count())  # as `serve` will: a GPU index that is not there
    streams = f"; {len(config.streams)} stream(s): {', '.join(s.name for s in config.streams)}" if config.streams else ""
    print(f"{args.config}: OK ({len(config.models)} model(s): {', '.join(m.name for m in config.models)}{streams})")
    return 0


def _models_from_daemon(config: Config, timeout: float):
    """ModelInfo list from the daemon at the config's address, or None when none answers."""
    from edgeinfer_client import Client, ClientError

    try:
        with Client(config.server.listen, timeout=timeout, token=os.environ.get("EDGEINFER_TOKEN")) as client:
            return client.list_models()
    except ClientError as exc:
        if exc.code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            print(f"the daemon at {config.server.listen} refused: {exc.message} (set EDGEINFER_TOKEN)", file=sys.stderr)
        return None


def _models_loaded_here(config: Config):
    """Load every model in this process (no server) and describe it."""
    from edgeinfer_client.types import model_from_proto

    from edgeinfer.model.registry import ModelRegistry
    from edgeinfer.rpc.converters import model_info

    registry = ModelRegistry(config)
    registry.start_loading()
    registry.wait_loaded()
    try:
        return [model_from_proto(model_info(m)) for m in registry]
    finally:
        registry.close()


def cmd_models(args) -> int:
    config = _load(args.config)
    if config.tls.enabled and not args.load:
        # This command asks over plain text; the daemon's CA and a client identity are the client's.
        print(f"the daemon at {config.server.listen} serves TLS: ask it with `edgeinfer-client --tls-ca CA.pem "
              f"[--tls-cert ... --tls-key ...] [--token ...] models`, or use --load", file=sys.stderr)
        models = None
    else:
        models = None if args.load else _models_from_daemon(config, timeout=2.0)
    source = f"daemon at {config.server.listen}"
    if models is None:
        source = "loaded in this process" if args.load else None
        if args.load:
            models = _models_loaded_here(config)
    if models is None:
        print(f"no daemon answers at {config.server.listen}; configured models (use --load to load them here):")
        for m in config.models:
            print(f"  {m.name:<16} {m.postprocess.task:<15} backends={m.backend_order} "
                  f"precision={m.precision} onnx={m.onnx}")
        return 0
    if args.json:
        print(json.dumps([m.to_dict() for m in models], indent=2))
        return 0
    print(f"models ({source}):")
    for m in models:
        print(f"  {m.name:<16} {m.state:<8} {m.backend or '-'}/{m.precision or '-'} on {m.device or '-'}  "
              f"task={m.task} max_batch={m.max_batch or '-'}")
        if m.state_reason:
            print(f"      {m.state_reason}")
        for a in m.attempts:
            print(f"      tried {a.backend}/{a.precision}: {a.outcome}{' - ' + a.reason if a.reason else ''}")
        for acc in m.accuracy:
            figures = ", ".join(f"{k}={v:.4f}" for k, v in sorted(acc.metrics.items()))
            verdict = "passed" if acc.passed else "REFUSED"
            print(f"      accuracy {acc.precision} vs fp32 ({acc.samples} samples): {figures}; "
                  f"{acc.gate_metric} >= {acc.threshold} {verdict}")
    return 0


def cmd_build(args) -> int:
    """Prepare every model as the daemon would at start (transforms, engines), with progress."""
    from pathlib import Path

    from edgeinfer.model.loading import ModelLoader

    config = _load(args.config)
    models = [m for m in config.models if not args.model or m.name in args.model]
    unknown = set(args.model or []) - {m.name for m in config.models}
    if unknown:
        print(f"edgeinfer: no model named {sorted(unknown)} in {args.config}", file=sys.stderr)
        return 2
    failed = 0
    for m in models:
        print(f"[{m.name}] building: backends {m.backend_order}, precision {m.precision}", flush=True)
        outcome = ModelLoader(m, Path(config.cache.dir),
                              progress=lambda msg, n=m.name: print(f"[{n}] {msg}", flush=True))()
        for a in outcome.attempts:
            print(f"[{m.name}]   {a.backend}/{a.precision}: {a.outcome}{' - ' + a.reason if a.reason else ''}")
        for rep in outcome.accuracy:
            figures = ", ".join(f"{k}={v:.4f}" for k, v in sorted(rep.metrics.items()))
            print(f"[{m.name}]   accuracy {rep.precision}: {figures} ({'passed' if rep.passed else 'REFUSED'})")
        runner = outcome.runner
        if runner is None:
            print(f"[{m.name}] FAILED: {outcome.failure_reason}", flush=True)
            failed += 1
            continue
        info = runner.info
        runner.deactivate()
        if args.require_backend and info.backend != args.require_backend:
            print(f"[{m.name}] FAILED: serves on {info.backend}, not {args.require_backend}", flush=True)
            failed += 1
            continue
        print(f"[{m.name}] OK: {info.backend}/{info.precision} on {info.device}", flush=True)
    return 1 if failed else 0


def cmd_cache(args) -> int:
    """Engine cache: list | verify | prune. The cache dir comes from --dir or the config."""
    from edgeinfer.cache import engines as engine_cache

    if args.dir:
        cache_dir = args.dir
    elif args.config:
        cache_dir = load_config(args.config, check_files=False).cache.dir
    else:
        from edgeinfer.config import CacheConfig

        cache_dir = CacheConfig().dir
    if args.action == "list":
        entries = [e.summary() for e in engine_cache.list_entries(cache_dir)]
        if args.json:
            print(json.dumps(entries, indent=2))
        elif not entries:
            print(f"no engines in {cache_dir}")
        for e in entries if not args.json else []:
            size = f"{e['size'] / 1e6:.1f} MB" if e["size"] else "?"
            print(f"{e['key'][:12]}  {e['model'] or '?':<14} {e['precision'] or '?':<5} {e['tensorrt']:<24} "
                  f"{e['gpu']:<32} {size:>9}  built {e['created'] or '?'}  last used {e['last_used'] or '?'}"
                  + (f"  REFUSED BY RUNTIME: {e['runtime_error']}" if e["runtime_error"] else ""))
        return 0
    if args.action == "verify":
        results = engine_cache.verify(cache_dir)
        bad = 0
        for entry, ok, reason in results:
            bad += not ok
            print(f"{entry.key[:12]}  {'ok' if ok else 'BROKEN'}  {reason}")
        print(f"{len(results)} engine(s), {bad} broken in {cache_dir}")
        return 1 if bad else 0
    older = args.older_than_days * 86400 if args.older_than_days is not None else None
    removed = engine_cache.prune(cache_dir, older_than=older, remove_broken=True, dry_run=args.dry_run)
    for entry, why in removed:
        print(f"{'would remove' if args.dry_run else 'removed'} {entry.key[:12]} ({entry.model or '?'}): {why}")
    print(f"{len(removed)} engine(s) {'to remove' if args.dry_run else 'removed'} from {cache_dir}")
    # The fp16/int8 ONNX variants (<cache>/onnx/): by age only, a reuse stamps them.
    from pathlib import Path

    from edgeinfer.cache.variants import prune_variants

    variants = prune_variants(Path(cache_dir), older, dry_run=args.dry_run)
    for path, why in variants:
        print(f"{'would remove' if args.dry_run else 'removed'} {path.name}: {why}")
    print(f"{len(variants)} precision variant(s) {'to remove' if args.dry_run else 'removed'} from "
          f"{Path(cache_dir) / 'onnx'}")
    return 0


def cmd_info(args) -> int:
    from edgeinfer import platform

    info = platform.detect()
    if args.json:
        print(json.dumps(info.as_dict(), indent=2))
        return 0
    print(f"edgeinfer {__version__} on {info.machine}, Python {info.python}")
    if info.jetson_model:
        print(f"  Jetson:       {info.jetson_model} (L4T {info.l4t_release or 'unknown'})")
    if info.gpus:
        for g in info.gpus:
            print(f"  GPU {g.index}:        {g.name}, compute capability {g.compute_capability}, {g.total_memory_mb} MiB")
    else:
        print("  GPU:          none found (CPU only)")
    print(f"  NVIDIA driver: {info.nvidia_driver or '-'}   CUDA driver API: {info.cuda_driver or '-'}   "
          f"CUDA runtime: {info.cuda_runtime or '-'}")
    print(f"  TensorRT:     {info.tensorrt or 'not installed'}"
          + (f"   TensorRT-RTX: {info.tensorrt_rtx}" if info.tensorrt_rtx else ""))
    print(f"  ONNX Runtime: {info.onnxruntime or 'not installed'} "
          f"(providers: {', '.join(info.onnxruntime_providers) or '-'})")
    return 0


def cmd_certs(args) -> int:
    try:
        from edgeinfer.rpc.certs import make_site
    except ImportError:  # pragma: no cover - the daemon extra brings cryptography
        print("edgeinfer certs needs the cryptography package: pip install 'edgeinfer[daemon]'", file=sys.stderr)
        return 2
    hosts = args.hosts or ["localhost", "127.0.0.1"]
    for path in make_site(Path(args.out), args.site, hosts, args.client or [], days=args.days):
        print(path)
    print(f"server certificate for {', '.join(hosts)}; [tls] cert = server.pem, key = server.key, "
          f"client_ca = ca.pem (keep ca.key off the device)", file=sys.stderr)
    return 0


def cmd_token(args) -> int:
    import secrets

    from edgeinfer.rpc.auth import hash_token

    token = secrets.token_urlsafe(32)
    roles = ", ".join(f'"{r}"' for r in args.roles)
    print(token)
    print(f'# give the line above to {args.name}; put this in the config:\n'
          f'[[auth.tokens]]\nname = "{args.name}"\nsha256 = "{hash_token(token)}"\nroles = [{roles}]', file=sys.stderr)
    return 0


# -- parser -----------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edgeinfer", description="gRPC edge-inference daemon")
    ap.add_argument("--version", action="version", version=f"edgeinfer {__version__}")
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the daemon in the foreground (logs to stderr)")
    p.add_argument("--config", required=True, help="TOML config file")
    p.add_argument("--listen", help="override [server] listen, e.g. 127.0.0.1:0")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check-config", help="validate a config file and exit")
    p.add_argument("config", help="TOML config file")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("models", help="show models: asks the running daemon, or loads them with --load")
    p.add_argument("--config", required=True)
    p.add_argument("--load", action="store_true", help="load the models in this process instead of asking the daemon")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("build", help="prebuild engines / precision variants into the cache, with progress")
    p.add_argument("--config", required=True)
    p.add_argument("--model", action="append", help="only this model (repeatable)")
    p.add_argument("--require-backend", choices=["tensorrt", "onnxruntime"],
                   help="fail unless the model ends up on this backend")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("cache", help="engine cache: list | verify | prune")
    p.add_argument("action", choices=["list", "verify", "prune"])
    p.add_argument("--config", help="take the cache dir from this config")
    p.add_argument("--dir", help="cache dir (default: the config's, else ~/.cache/edgeinfer)")
    p.add_argument("--json", action="store_true", help="list: JSON")
    p.add_argument("--older-than-days", type=float, help="prune: entries not used for this many days")
    p.add_argument("--dry-run", action="store_true", help="prune: only say what would go")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("certs", help="make a site's CA, a server certificate and client certificates (mTLS)")
    p.add_argument("--out", required=True, help="folder for the PEM files (an existing CA there is reused)")
    p.add_argument("--site", required=True, help="organization name in the certificates")
    p.add_argument("--hosts", nargs="+", help="server DNS names / IP addresses (default: localhost 127.0.0.1)")
    p.add_argument("--client", action="append", help="a client certificate with this common name (repeatable)")
    p.add_argument("--days", type=int, default=825, help="validity of server and client certificates")
    p.set_defaults(func=cmd_certs)

    p = sub.add_parser("token", help="make a bearer token: prints it, and its [[auth.tokens]] entry on stderr")
    p.add_argument("--name", required=True, help="who holds it (for logs)")
    p.add_argument("--roles", nargs="+", default=["infer"], choices=["infer", "admin"])
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("info", help="what this machine offers: GPU, CUDA, TensorRT, ONNX Runtime, Jetson")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)
    _add_plugin_commands(sub)
    return ap


PLUGIN_GROUP = "edgeinfer.commands"


def _add_plugin_commands(sub) -> None:
    """Subcommands that installed packages add (`edgeinfer bench` comes from edgeinfer_bench).

    An entry point in the `edgeinfer.commands` group names a function that takes the
    subparsers object and adds its parser. The daemon never imports such a package itself,
    so the benchmark stays a client of the daemon, not a part of it."""
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        try:
            ep.load()(sub)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the daemon's CLI down
            logging.getLogger(__name__).warning("edgeinfer %s is unavailable: %s", ep.name, exc)


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"edgeinfer: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
