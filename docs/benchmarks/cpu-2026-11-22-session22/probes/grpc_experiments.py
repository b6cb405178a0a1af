"""Bare echo under GRPC_EXPERIMENTS variants: req/s and server CPU a request, interleaved. argv: rounds conc kind(trivial|image) variant..."""
import os, sys, time, statistics as S
sys.path[:0] = ["/work/main/daemon", "/work/main/clients"]
from pathlib import Path
from edgeinfer.bench.loadgen import LoadSpec, run_load
from edgeinfer.bench.workload import tensor_payload, image_payload, find_images
from edgeinfer.bench.echo import EchoServer, UNARY

def cpu(pid):
    x = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(x[11]) + int(x[12])) / os.sysconf("SC_CLK_TCK")

def main():
    rounds, conc, kind, variants = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    if kind == "trivial":
        pay, size = tensor_payload("trivial", {"x": (1, 64)}), 314
    else:
        pay, size = image_payload("imagenet", find_images(Path("/work/main/assets/media"))[:8]), 400
    servers = {}
    base = dict(os.environ)
    for v in variants:
        os.environ.clear(); os.environ.update(base)
        if v != "default":
            os.environ["GRPC_EXPERIMENTS"] = v
        e = EchoServer(loop="uvloop").start(); e.respond_with(size)
        servers[v] = e
    os.environ.clear(); os.environ.update(base)
    time.sleep(2)
    res = {v: [] for v in variants}
    for r in range(rounds):
        for v in (variants if r % 2 == 0 else variants[::-1]):
            e = servers[v]
            spec = LoadSpec(address=e.address, method=UNARY, mode="unary", requests=pay.requests, concurrency=conc,
                            duration_s=3.0, warmup_s=0.5, loop="uvloop", response_kind="none")
            c0, t0 = cpu(e._proc.pid), time.monotonic()
            out = run_load(spec, progress=None)
            c1, t1 = cpu(e._proc.pid), time.monotonic()
            rate = out.summary.throughput
            res[v].append((rate, (c1 - c0) / (rate * (t1 - t0)) * 1e6))
        print(f"round {r+1}: " + "  ".join(f"{v} {res[v][-1][0]:.0f} ({res[v][-1][1]:.0f}us)" for v in variants), flush=True)
    b = variants[0]
    for v in variants:
        rat = [x[0] / y[0] for x, y in zip(res[v], res[b])]
        print(f"{v:40s} {S.median([x[0] for x in res[v]]):7.0f} req/s  {S.median([x[1] for x in res[v]]):5.0f} us/req  vs {b} {S.median(rat):.3f} ({sum(x > 1 for x in rat)}/{rounds})")
    for e in servers.values():
        e.stop()

if __name__ == "__main__":
    main()
