"""`edgeinfer-client`: infer | stream | streams | watch | snapshot | models | health against a running daemon.

Exit status: 0 success, 1 the call failed (message on stderr), 2 bad usage.
With --json, `infer` prints exactly one JSON object, `stream` and `watch` one per line.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path
from typing import Iterator, Optional

from ._channel import TlsOptions
from .client import DEFAULT_ADDRESS, Client
from .errors import ClientError
from .types import InferResult, StreamError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def _describe(result: InferResult) -> str:
    lines = [f"{result.model} ({result.backend}/{result.precision}) "
             f"{result.image_size[0]}x{result.image_size[1]} in {result.timing_us.get('total', 0) / 1000:.1f} ms"]
    for c in result.classes:
        lines.append(f"  {c.score:6.3f}  {c.index:4d}  {c.label}")
    for d in result.detections:
        box = ", ".join(f"{v:.0f}" for v in d.box)
        lines.append(f"  {d.label or d.class_index} {d.score:.3f} box=[{box}]")
    if not result.classes and not result.detections:
        if result.outputs:
            for name, arr in result.outputs.items():
                lines.append(f"  {name}: {arr.dtype} {list(arr.shape)}")
        else:
            lines.append("  (nothing found)")
    return "\n".join(lines)


def _is_live_source(source: str) -> bool:
    """A URL (rtsp://, http(s)://, ...) or a camera (/dev/videoN, or its index): never a path."""
    return "://" in source or source.startswith("/dev/video") or source.isdigit()


def _frames(source: str) -> Iterator[bytes]:
    """Encoded images from a folder/list of image files, or frames of a video, a URL or a camera (JPEG-encoded)."""
    live = _is_live_source(source)
    if not live:
        path = Path(source)
        if path.is_dir():
            for p in sorted(path.iterdir()):
                if p.suffix.lower() in IMAGE_SUFFIXES:
                    yield p.read_bytes()
            return
        if path.suffix.lower() in IMAGE_SUFFIXES:
            yield path.read_bytes()
            return
        if not path.exists():
            raise ClientError("INVALID_ARGUMENT", f"{source}: no such file or folder")
    try:
        import cv2
    except ImportError:
        what = "a stream URL or camera" if live else "video"
        raise ClientError("INVALID_ARGUMENT", f"reading {what} needs OpenCV, which the client's base install "
                          "leaves out: pip install opencv-python-headless") from None
    # A URL or device goes to OpenCV as it is (a Path would turn rtsp://cam into rtsp:/cam).
    target = int(source) if source.isdigit() else source
    if live:
        # Bounded waits: a silent server must not hang the client (milliseconds).
        cap = cv2.VideoCapture(target, cv2.CAP_ANY, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 10000,
                                                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, 10000])
    else:
        cap = cv2.VideoCapture(target)
    if not cap.isOpened():
        raise ClientError("INVALID_ARGUMENT", f"cannot open {source} as a video"
                          + (" (no answer, refused, or not a video stream)" if live else ""))
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
            if ok:
                yield buf.tobytes()
    finally:
        cap.release()


def cmd_infer(client: Client, args) -> int:
    result = client.infer(args.model, Path(args.image), top_k=args.top_k, score_threshold=args.score_threshold)
    print(json.dumps(result.to_dict()) if args.json else _describe(result))
    return 0


def cmd_stream(client: Client, args) -> int:
    failures = 0
    count = 0
    # The first frame is read here, before the call: an error opening the source reaches the
    # user as itself, where inside gRPC's request iterator it became "Exception iterating requests".
    frames = _frames(args.source)
    first = next(frames, None)
    if first is None:
        raise ClientError("INVALID_ARGUMENT", f"{args.source}: no frames or images found")
    for item in client.stream(args.model, itertools.chain([first], frames), score_threshold=args.score_threshold):
        count += 1
        if isinstance(item, StreamError):
            failures += 1
            if args.json:
                print(json.dumps({"model": args.model, "request_id": item.request_id, "sequence": item.sequence,
                                  "error": {"code": item.code, "message": item.message}}), flush=True)
            else:
                print(f"frame {item.sequence}: {item.code}: {item.message}", flush=True)
            continue
        if args.json:
            print(json.dumps(item.to_dict()), flush=True)
        else:
            print(f"frame {item.request_id}: " + _describe(item), flush=True)
    if count == 0:
        raise ClientError("INVALID_ARGUMENT", f"{args.source}: no frames or images found")
    if failures:
        print(f"edgeinfer-client: {failures} of {count} frames failed", file=sys.stderr)
        return 1
    return 0


def cmd_streams(client: Client, args) -> int:
    streams = client.streams()
    if args.json:
        print(json.dumps([s.to_dict() for s in streams], indent=2))
        return 0
    if not streams:
        print("(no streams configured: add [[streams]] to the daemon's config)")
        return 0
    for s in streams:
        size = f"{s.width}x{s.height}" if s.width else "-"
        print(f"{s.name:<16} {s.state:<12} {s.model:<12} {size:<9} in {s.fps_in:5.1f} fps  out {s.fps_out:5.1f} fps  "
              f"frames {s.frames_in} in / {s.frames_processed} done / {s.frames_dropped} dropped  "
              f"reconnects {s.reconnects}  {s.source}")
        if s.state_reason:
            print(f"    {s.state_reason}")
        if s.last_error and s.last_error not in s.state_reason:
            print(f"    last error: {s.last_error}")
    return 0


def cmd_watch(client: Client, args) -> int:
    for item in client.watch(args.name, count=args.count, timeout=args.seconds):
        if args.json:
            print(json.dumps(item.to_dict()), flush=True)
            continue
        found = [f"{d.label or d.class_index} {d.score:.2f} [{', '.join(f'{v:.0f}' for v in d.box)}]"
                 for d in item.detections] + [f"{c.label} {c.score:.2f}" for c in item.classes]
        print(f"{item.stream} frame {item.frame} +{item.latency_s * 1000:.0f} ms: {'; '.join(found) or '-'}",
              flush=True)
    return 0


def cmd_snapshot(client: Client, args) -> int:
    jpeg = client.snapshot(args.name, draw_boxes=args.boxes)
    Path(args.output).write_bytes(jpeg)
    print(f"{args.output}: {len(jpeg)} bytes")
    return 0


def cmd_models(client: Client, args) -> int:
    models = client.list_models()
    if args.json:
        print(json.dumps([m.to_dict() for m in models], indent=2))
        return 0
    for m in models:
        print(f"{m.name:<16} {m.state:<8} {m.backend or '-'}/{m.precision or '-'} {m.device or '-'}  "
              f"task={m.task}  {m.state_reason}")
        for t in m.inputs:
            print(f"    in  {t.name}: {t.dtype} {t.shape}")
        for t in m.outputs:
            print(f"    out {t.name}: {t.dtype} {t.shape}")
    return 0


def cmd_reload(client: Client, args) -> int:
    result = client.reload(timeout=max(args.timeout, 600.0))  # a changed model may build an engine first
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0 if result.accepted else 1
    if not result.accepted:
        print(f"reload refused: {result.error}", file=sys.stderr)
        return 1
    print(f"reloaded {result.config_path}")
    for m in result.models:
        line = f"  {m.name:<16} {m.action:<9}"
        if m.detail:
            line += f" {m.detail}"
        if m.error:
            line += f": {m.error}"
        print(line)
    for key in result.needs_restart:
        print(f"  needs restart (not applied): {key}")
    return 1 if any(m.action == "failed" for m in result.models) else 0


def cmd_health(client: Client, args) -> int:
    status = client.health(args.service)
    print(status)
    return 0 if status == "SERVING" else 1


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edgeinfer-client", description="call an edgeinfer daemon")
    ap.add_argument("--address", default=os.environ.get("EDGEINFER_ADDRESS", DEFAULT_ADDRESS),
                    help=f"daemon address (default {DEFAULT_ADDRESS}, or $EDGEINFER_ADDRESS)")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per call (stream: per frame)")
    ap.add_argument("--tls", action="store_true", help="TLS, checked against the system's trust roots "
                    "(implied by --tls-ca / --tls-cert)")
    ap.add_argument("--tls-ca", help="PEM file of the CA that signed the daemon's certificate")
    ap.add_argument("--tls-cert", help="PEM client certificate, for daemons that require one (mutual TLS)")
    ap.add_argument("--tls-key", help="PEM key of --tls-cert")
    ap.add_argument("--tls-server-name", help="name to check the daemon's certificate against")
    ap.add_argument("--token", default=os.environ.get("EDGEINFER_TOKEN"),
                    help="bearer token (default $EDGEINFER_TOKEN)")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("infer", help="send one image")
    p.add_argument("--model", required=True)
    p.add_argument("image")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--score-threshold", type=float)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("stream", help="send a video's frames (or a folder of images) over InferStream")
    p.add_argument("--model", required=True)
    p.add_argument("source", help="video file, image file, folder of images, stream URL (rtsp://, http(s)://) "
                                  "or camera (/dev/videoN); URLs and cameras need OpenCV")
    p.add_argument("--score-threshold", type=float)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("streams", help="list the streams the daemon pulls itself ([[streams]])")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_streams)

    p = sub.add_parser("watch", help="print the results of a stream's frames as they come")
    p.add_argument("name")
    p.add_argument("--count", type=int, help="exit after this many results")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--seconds", type=float, help="stop after this long (default: no limit)")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("snapshot", help="save a stream's latest frame as JPEG")
    p.add_argument("name")
    p.add_argument("-o", "--output", default="snapshot.jpg")
    p.add_argument("--boxes", action="store_true", help="draw the last result's boxes")
    p.set_defaults(func=cmd_snapshot)

    p = sub.add_parser("models", help="list the daemon's models")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("reload", help="make the daemon re-read its config file (like systemctl reload)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_reload)

    p = sub.add_parser("health", help="SERVING / NOT_SERVING of the daemon or one model")
    p.add_argument("service", nargs="?", default="", help="model name ('' = the whole daemon)")
    p.set_defaults(func=cmd_health)
    return ap


def _tls(args):
    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name):
        return None
    return TlsOptions(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key, server_name=args.tls_server_name)


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with Client(args.address, timeout=args.timeout, tls=_tls(args), token=args.token) as client:
            return args.func(client, args)
    except ClientError as exc:
        print(f"edgeinfer-client: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # Output closed early (e.g. `| head`): not an error of the call.
        sys.stdout = open(os.devnull, "w")
        return 0
    except OSError as exc:
        print(f"edgeinfer-client: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
