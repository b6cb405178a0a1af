"""Interleaved echo variants with different server options; argv: rounds conc req_bytes answer_bytes. Probe, session 21."""
import json, os, subprocess, sys, time, statistics as S
sys.path[:0] = ["/work/main/daemon", "/work/main/clients"]
from edgeinfer.bench.loadgen import LoadSpec, run_load
PY = "/work/main/.venv/bin/python"
VARIANTS = {
    "default": [],
    "throughput": [["grpc.optimization_target", "throughput"]],
    "latency": [["grpc.optimization_target", "latency"]],
}
def cpu(pid):
    x = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(x[11]) + int(x[12])) / os.sysconf("SC_CLK_TCK")
def main():
    rounds, conc, req, ans = map(int, sys.argv[1:5])
    names = sys.argv[5:] or list(VARIANTS)
    procs = {}
    for i, n in enumerate(names):
        p = subprocess.Popen([PY, "/tmp/p21/echo_opts.py", str(50170 + i), str(ans), json.dumps(VARIANTS[n])], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        procs[n] = (p, f"127.0.0.1:{50170 + i}")
    payload = [os.urandom(req) for _ in range(4)]
    res = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            p, addr = procs[n]
            spec = LoadSpec(address=addr, method="/edgeinfer.bench.Echo/Unary", mode="unary", requests=payload,
                            concurrency=conc, duration_s=3.0, warmup_s=0.5, loop="uvloop")
            a = cpu(p.pid); t0 = time.monotonic()
            out = run_load(spec, progress=None)
            b = cpu(p.pid); t1 = time.monotonic()
            rate = out.summary.throughput
            res[n].append((rate, (b - a) / (rate * (t1 - t0)) * 1e6))
        print(f"round {r+1}: " + "  ".join(f"{n} {res[n][-1][0]:.0f} ({res[n][-1][1]:.0f}us)" for n in names), flush=True)
    base = names[0]
    for n in names:
        rat = [x[0] / y[0] for x, y in zip(res[n], res[base])]
        print(f"{n:12s} median {S.median(x[0] for x in res[n]):8.0f} req/s  server cpu/req {S.median(x[1] for x in res[n]):5.0f} us  vs {base} {S.median(rat):.3f} ({sum(v > 1 for v in rat)}/{rounds} above)")
    for p, _ in procs.values():
        p.terminate(); p.wait()
if __name__ == "__main__":
    main()
