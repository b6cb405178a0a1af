"""Per-thread CPU of a running daemon under imagenet c=8 load (probe, not project code)."""
import os, subprocess, sys, time
from pathlib import Path
sys.path[:0] = ["/work/main/daemon", "/work/main/clients"]
from edgeinfer.bench.loadgen import LoadSpec, run_load, INFER_METHOD
from edgeinfer.bench.workload import image_payload, find_images, default_image_dir

def ticks(pid):
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            s = open(f"/proc/{pid}/task/{t}/stat").read()
            comm = open(f"/proc/{pid}/task/{t}/comm").read().strip()
        except OSError:
            continue
        f = s.rsplit(")", 1)[1].split()
        out[int(t)] = (comm, int(f[11]) + int(f[12]), int(f[11]), int(f[12]))
    return out

def main():
    cfg = sys.argv[1]; model = sys.argv[2] if len(sys.argv) > 2 else "imagenet"
    conc = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    env = dict(os.environ)
    d = subprocess.Popen(["/work/main/.venv/bin/edgeinfer", "serve", "--config", cfg], env=env,
                         stdout=subprocess.DEVNULL, stderr=open("/tmp/probe/daemon.log", "w"))
    time.sleep(12)
    if model == "trivial":
        from edgeinfer.bench.workload import tensor_payload
        pay = tensor_payload("trivial", {"x": (1, 64)})
    else:
        paths = find_images(default_image_dir(Path("/work/main/assets/media")))
        pay = image_payload(model, paths[:5])
    spec = LoadSpec(address="127.0.0.1:50051", method=INFER_METHOD, mode="unary", requests=pay.requests,
                    concurrency=conc, duration_s=float(os.environ.get("DUR", "10")), warmup_s=1.0, loop="uvloop",
                    response_kind="infer")
    box = {}
    def on_start():
        time.sleep(1.0)
        box["a"] = (time.monotonic(), ticks(d.pid))
    import threading
    def sampler():
        while "a" not in box: time.sleep(0.05)
        if os.environ.get("SPY"):
            subprocess.run(["/work/main/.venv/bin/py-spy", "record", "-p", str(d.pid), "-d", "6", "-r", "1000", "--nonblocking", "--threads", "-f", "raw", "-o", "/tmp/probe/spy.txt"], capture_output=True)
        elif os.environ.get("PERF"):
            subprocess.run(["perf", "record", "-F", "4000", "-g", "-t", str(d.pid), "-o", "/tmp/probe/perf.data", "--", "sleep", "6"], capture_output=True)
        else:
            time.sleep(float(os.environ.get("DUR", "10")) - 1)
        box["b"] = (time.monotonic(), ticks(d.pid))
        if os.environ.get("PYSPY"):
            box["dump"] = subprocess.run(["/work/main/.venv/bin/py-spy", "dump", "--pid", str(d.pid)], capture_output=True, text=True).stdout
    th = threading.Thread(target=sampler); th.start()
    res = run_load(spec, progress=None, on_start=lambda: threading.Thread(target=on_start).start())
    th.join()
    d.terminate(); d.wait()
    (t0, a), (t1, b) = box["a"], box["b"]
    hz = os.sysconf("SC_CLK_TCK"); el = t1 - t0
    rate = res.summary.throughput
    print(f"throughput {rate:.1f}/s  mean {res.summary.mean_ms if hasattr(res.summary,'mean_ms') else ''}")
    rows = []
    for tid, (comm, tot, u, s) in b.items():
        pa = a.get(tid, (comm, 0, 0, 0))
        dt = (tot - pa[1]) / hz
        if dt > 0:
            rows.append((dt / el, tid, comm, (u - pa[2]) / hz / el, (s - pa[3]) / hz / el))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    print(f"daemon cores {total:.3f}; per request {total / rate * 1e3:.3f} ms")
    for cores, tid, comm, u, s in rows:
        tag = "MAIN" if tid == d.pid else ""
        print(f"  {tid:7d} {comm:18s} {cores:.3f} cores (u {u:.3f} s {s:.3f})  {cores / rate * 1e6:8.0f} us/req {tag}")
    if "dump" in box:
        print(box["dump"])
if __name__ == "__main__":
    main()
