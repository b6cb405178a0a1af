"""What bounds the trivial model next to the bare echo: five servers, same load, same run.

    echo        the bench's bare grpc.aio echo server (bytes in, canned bytes out)
    ort-minimal the fewest lines that serve the trivial model through ONNX Runtime: typed
                gRPC handler, one tensor parsed with np.frombuffer, session.run, one Tensor
                back; no validation, no metrics, no timing, no pipeline
    daemon      the edgeinfer daemon serving the same model (bench/trivial.py's config)
    echo-threads, ort-minimal-threads
                the same two on gRPC's other server mode, the thread-pool server
                (grpc.server with --threads handler threads, no event loop): does
                another server mode than grpc.aio lower the floor?

Each is measured at concurrency 1 and 8 with the bench's load generator, round after round
(so drift on a shared box hits all three alike), and the script prints throughput, P50, the
server's CPU time per request (from /proc over the whole point) and, for ort-minimal, the
mean time of session.run as seen inside the handler. The ratios of medians say how much of
the gap to echo any ONNX Runtime-backed handler pays, and how much is the daemon's own.

Run: .venv/bin/python scripts/trivial_floor.py [--rounds 3] [--duration 5] [--loop uvloop]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "daemon"), str(ROOT / "clients")]

from edgeinfer.bench.child import ChildServer  # noqa: E402 - needs the path above


def _ort_minimal(conn, loop_kind: str, threads: int) -> None:
    """Child process: the ort-minimal server; reports its port, then session.run's mean time at the end.

    threads 0: a grpc.aio server on `loop_kind`; threads N: gRPC's thread-pool server with N handler threads.
    """
    import grpc
    import numpy as np
    import onnxruntime as ort

    from edgeinfer.bench.trivial import build_trivial_onnx
    from edgeinfer_client._proto.edgeinfer.v1 import inference_pb2 as pb
    from edgeinfer_client._proto.edgeinfer.v1 import inference_pb2_grpc as pb_grpc

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1  # as trivial_model_config sets them
    path = build_trivial_onnx(Path(tempfile.mkdtemp()) / "trivial.onnx")
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    spent = [0.0, 0]

    def answer(request):
        t = request.tensors.tensors[0]
        x = np.frombuffer(t.data, np.float32).reshape(tuple(t.shape))
        t0 = time.perf_counter()
        y = session.run(None, {t.name: x})[0]
        spent[0] += time.perf_counter() - t0
        spent[1] += 1
        out = pb.InferResponse(model=request.model)
        out.outputs.append(pb.Tensor(name="y", dtype=pb.DATA_TYPE_FLOAT32, shape=y.shape, data=y.tobytes()))
        return out

    class Minimal(pb_grpc.InferenceServicer):
        async def Infer(self, request, context):
            return answer(request)

    class MinimalThreads(pb_grpc.InferenceServicer):
        def Infer(self, request, context):
            return answer(request)

    def report_run_time() -> None:
        conn.send(spent[0] / max(spent[1], 1))

    if threads:
        _serve_threads(conn, threads, lambda server: pb_grpc.add_InferenceServicer_to_server(MinimalThreads(), server))
        report_run_time()
        return

    from edgeinfer.eventloop import run

    async def serve() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        pb_grpc.add_InferenceServicer_to_server(Minimal(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        conn.send(port)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await server.stop(0.2)
        report_run_time()

    run(serve(), loop_kind)


def _serve_threads(conn, threads: int, add) -> None:
    """gRPC's thread-pool server with `add(server)`'s services: send the port, serve until the parent writes."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    server = grpc.server(ThreadPoolExecutor(max_workers=threads), options=[("grpc.so_reuseport", 0)])
    add(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    conn.send(port)
    conn.recv()
    server.stop(0.2).wait()


def _echo_threads(conn, threads: int) -> None:
    """Child process: the bench's echo (bench/echo.py's methods and sizes) on gRPC's thread-pool server."""
    import grpc

    from edgeinfer.bench.echo import _METHOD

    blobs: dict[int, bytes] = {}

    class Echo(grpc.GenericRpcHandler):
        def service(self, details):
            m = _METHOD.match(details.method)
            if m is None or m.group(1) != "Unary":
                return None
            payload = blobs.setdefault(int(m.group(2)), bytes(int(m.group(2))))
            return grpc.unary_unary_rpc_method_handler(lambda request, context: payload)

    _serve_threads(conn, threads, lambda server: server.add_generic_rpc_handlers((Echo(),)))


class _Server(ChildServer):
    """ort-minimal (which reports session.run's mean time on stop) or the thread-pool echo, in a child process."""

    def __init__(self, target, args: tuple, name: str):
        super().__init__()
        self.target, self.args, self.name = target, args, name
        self.pid = None
        self.run_us = 0.0

    def start(self, timeout: float = 60.0) -> "_Server":
        self.port = self._spawn(self.target, self.args, f"trivial-floor-{self.name}", timeout,
                                f"the {self.name} server did not start")
        self.pid = self._proc.pid
        return self

    def stop(self) -> None:
        if self._conn is not None:
            self._conn.send("stop")
            if self.target is _ort_minimal and self._conn.poll(10):
                self.run_us = self._conn.recv() * 1e6
        super().stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--loop", default="uvloop")
    ap.add_argument("--threads", type=int, default=8,
                    help="handler threads of the thread-pool servers (0: leave them out)")
    ap.add_argument("--config", type=Path, default=None,
                    help="serve the trivial model next to this config's models (default: the trivial model alone)")
    args = ap.parse_args()

    from edgeinfer.bench.daemon_proc import DaemonProcess
    from edgeinfer.bench.echo import EchoServer, unary_method
    from edgeinfer.bench.environment import tree_cpu_seconds
    from edgeinfer.bench.loadgen import INFER_METHOD, LoadSpec, run_load
    from edgeinfer.bench.trivial import NAME, WIDTH, build_trivial_onnx, trivial_model_config
    from edgeinfer.bench.workload import tensor_payload
    from edgeinfer.config import Config, load_config

    requests = tensor_payload(NAME, {"x": (1, WIDTH)}).requests
    trivial = trivial_model_config(build_trivial_onnx(Path(tempfile.mkdtemp()) / "t.onnx"))
    config = load_config(args.config) if args.config else Config(models=[], source="trivial_floor.py")
    config.models.append(trivial)
    results: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    run_us: list[float] = []

    def point(name: str, address: str, method: str, pid: int, c: int) -> None:
        before = tree_cpu_seconds(pid)
        spec = LoadSpec(address, method, "unary", requests, c, args.duration, warmup_s=1.0, loop=args.loop,
                        response_kind="none")
        res = run_load(spec, progress=None)
        cpu = tree_cpu_seconds(pid) - before
        n = res.summary.count * (args.duration + 1.0) / args.duration  # the warm-up's requests used CPU too
        results.setdefault((name, c), []).append((res.summary.throughput, res.summary.p50_ms * 1e3,
                                                   cpu / max(n, 1) * 1e6))
        print(f"{name:20s} c={c}: {res.summary.throughput:7.0f}/s  P50 {res.summary.p50_ms * 1e3:6.0f} us  "
              f"server CPU {cpu / max(n, 1) * 1e6:5.0f} us/request", flush=True)

    for k in range(args.rounds):
        print(f"-- round {k + 1}/{args.rounds}", flush=True)
        with EchoServer(loop=args.loop) as echo:
            for c in (1, 8):
                point("echo", echo.address, unary_method(300), echo.pid, c)
        with _Server(_ort_minimal, (args.loop, 0), "ort-minimal") as m:
            for c in (1, 8):
                point("ort-minimal", f"127.0.0.1:{m.port}", INFER_METHOD, m.pid, c)
        run_us.append(m.run_us)
        if args.threads:
            with _Server(_echo_threads, (args.threads,), "echo-threads") as e:
                for c in (1, 8):
                    point("echo-threads", f"127.0.0.1:{e.port}", unary_method(300), e.pid, c)
            with _Server(_ort_minimal, (args.loop, args.threads), "ort-minimal-threads") as m:
                for c in (1, 8):
                    point("ort-minimal-threads", f"127.0.0.1:{m.port}", INFER_METHOD, m.pid, c)
        with DaemonProcess(config, loop=args.loop) as d:
            for c in (1, 8):
                point("daemon", d.address, INFER_METHOD, d.pid, c)

    print(f"\nmedians over {args.rounds} rounds (event loop {args.loop}; thread-pool servers: {args.threads} "
          "handler threads):")
    print("| server | c | req/s | P50 us | server CPU us/request | req/s vs echo |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for c in (1, 8):
        echo_rate = statistics.median(r[0] for r in results[("echo", c)])
        for name in ("echo", "ort-minimal", "daemon") + (("echo-threads", "ort-minimal-threads") if args.threads else ()):
            rows = results[(name, c)]
            rate = statistics.median(r[0] for r in rows)
            print(f"| {name} | {c} | {rate:,.0f} | {statistics.median(r[1] for r in rows):,.0f} | "
                  f"{statistics.median(r[2] for r in rows):,.0f} | {rate / echo_rate:.2f} |")
    print(f"\nort-minimal: session.run took {statistics.median(run_us):.1f} us per request inside the handler "
          f"(median of the rounds' means); the same call in a tight loop takes ~8 us on this box.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
