import os, subprocess, sys, time, threading
sys.path[:0] = ["/work/main/daemon", "/work/main/clients"]
from edgeinfer.bench.loadgen import LoadSpec, run_load, INFER_METHOD
from edgeinfer.bench.workload import tensor_payload
def snap(pid):
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            raw = open(f"/proc/{pid}/task/{t}/stat").read()
            comm = raw[raw.index("(")+1:raw.rindex(")")]
            x = raw.rsplit(")", 1)[1].split()
            out[t] = (comm, int(x[11]) + int(x[12]), int(open(f"/proc/{pid}/task/{t}/status").read().split("nonvoluntary_ctxt_switches:")[0].split("voluntary_ctxt_switches:")[1]))
        except OSError: pass
    return out
def main():
    cfg = sys.argv[1]
    pay = tensor_payload("trivial", {"x": (1, 64)})
    d = subprocess.Popen(["/work/main/.venv/bin/edgeinfer", "serve", "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(10)
    addr = "127.0.0.1:" + open(cfg).read().split("127.0.0.1:")[1].split('"')[0]
    spec = LoadSpec(address=addr, method=INFER_METHOD, mode="unary", requests=pay.requests, concurrency=8, duration_s=5.0, warmup_s=1.0, loop="uvloop")
    res = {}
    def rec():
        time.sleep(1.5); a = snap(d.pid); time.sleep(4.0); b = snap(d.pid); res["a"], res["b"] = a, b
    t = threading.Thread(target=rec); t.start()
    out = run_load(spec, progress=None); t.join()
    rate = out.summary.throughput
    a, b = res["a"], res["b"]
    tk = os.sysconf("SC_CLK_TCK")
    rows = sorted(((b[k][1] - a[k][1]) / tk / 4.0 / rate * 1e6, b[k][0], k, (b[k][2]-a[k][2]) / 4.0 / rate) for k in b if k in a)
    print(f"{cfg}: {rate:.0f} req/s, threads {len(b)}")
    for us, comm, tid, vcs in rows[::-1][:10]:
        print(f"  {comm:18s} {tid:>8s} {us:7.1f} us/req  vol ctx switches/req {vcs:.2f}")
    d.terminate(); d.wait()
if __name__ == "__main__":
    main()
