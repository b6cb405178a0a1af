"""Interleaved A/B of daemon variants on the trivial model at c=8, with per-thread-name CPU and
voluntary switches a request. argv: rounds conc variant... (probe, session 20)"""
import os, subprocess, sys, time, statistics as S, collections
sys.path[:0] = ["/work/main/daemon", "/work/main/clients"]
from edgeinfer.bench.loadgen import LoadSpec, run_load, INFER_METHOD
from edgeinfer.bench.workload import tensor_payload
from edgeinfer.bench.echo import EchoServer, UNARY

DEV_MODELS = open("/work/main/configs/dev.toml").read().split("[[models]]", 1)[1].replace('"../assets/', '"/work/main/assets/')
PY = "/work/main/.venv/bin/python"
WRAP = {  # variant -> python prelude run before the daemon's main (None: the plain console script)
    "servelean": open("/tmp/p20/lean.py").read(),
    "servenort": "import os; os.environ['LEAN_NORT'] = '1'\n" + open("/tmp/p20/lean.py").read(),
    "serveraw": open("/tmp/p20/raw.py").read(),
    "serveleanA": "import os; os.environ['LEAN_A'] = '1'\n" + open("/tmp/p20/lean.py").read(),
    "zhealth": "from edgeinfer.server import servicer as S\nB = bytes(314)\nasync def Infer(self, request, context):\n    return B\nS.InferenceServicer.Infer = Infer" + "\nimport edgeinfer.server.app as A\nA.health_pb2_grpc.add_HealthServicer_to_server = lambda *a: None",
    "ztick": "from edgeinfer.server import servicer as S\nB = bytes(314)\nasync def Infer(self, request, context):\n    return B\nS.InferenceServicer.Infer = Infer" + "\nimport edgeinfer.server.app as A\n_i = A.Daemon.__init__\ndef __init__(self, *a, **k):\n    _i(self, *a, **k); self.tick_s = 3600.0\nA.Daemon.__init__ = __init__",
    "zfreeze": "from edgeinfer.server import servicer as S\nB = bytes(314)\nasync def Infer(self, request, context):\n    return B\nS.InferenceServicer.Infer = Infer" + "\nimport gc, threading, time\nthreading.Thread(target=lambda: (time.sleep(8), gc.collect(), gc.freeze()), daemon=True).start()",
    "zreflect": "from edgeinfer.server import servicer as S\nB = bytes(314)\nasync def Infer(self, request, context):\n    return B\nS.InferenceServicer.Infer = Infer",
    "zhot": open("/tmp/p20/hotonly.py").read() + "\n" + "from edgeinfer.server import servicer as S\nB = bytes(314)\nasync def Infer(self, request, context):\n    return B\nS.InferenceServicer.Infer = Infer",
    "servehot": open("/tmp/p20/hotonly.py").read(),
    "servezero": "from edgeinfer.server import servicer as S\nB = bytes(314)\nasync def Infer(self, request, context):\n    return B\nS.InferenceServicer.Infer = Infer",
    "servehalf": "from edgeinfer.server import servicer as S\nasync def Infer(self, request, context):\n    return self._answer_inline(request).SerializeToString()\nS.InferenceServicer.Infer = Infer",
    "servecv": "import cv2, numpy as np; cv2.resize(np.zeros((480,640,3),np.uint8),(224,224)); cv2.imdecode(cv2.imencode('.jpg', np.zeros((64,64,3),np.uint8))[1], 1)",
}

def snap(pid):
    out = collections.Counter(); vol = collections.Counter(); n = collections.Counter()
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            raw = open(f"/proc/{pid}/task/{t}/stat").read()
            st = open(f"/proc/{pid}/task/{t}/status").read()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1:raw.rindex(")")]
        x = raw.rsplit(")", 1)[1].split()
        comm = comm + ":" + t
        out[comm] += int(x[11]) + int(x[12])
        vol[comm] += int(st.split("\nvoluntary_ctxt_switches:")[1].split()[0]) + int(st.split("nonvoluntary_ctxt_switches:")[1].split()[0])
        n[comm] += 1
    return out, vol, n

def config(variant, port):
    txt = open("/tmp/cfg/trivial.toml").read().replace("127.0.0.1:50051", f"127.0.0.1:{port}")
    if variant == "zreflect":
        txt = txt.replace("[server]\n", "[server]\nreflection = false\n")
    if "full" in variant:
        txt += "\n[[models]]" + DEV_MODELS
    if "faces" in variant:
        txt += "\n[[models]]" + DEV_MODELS.split("[[models]]")[0]
    if "imagenet" in variant:
        txt += "\n[[models]]" + DEV_MODELS.split("[[models]]")[1]
    path = f"/tmp/p20/{variant}.toml"
    open(path, "w").write(txt)
    return path

def main():
    rounds, conc, variants = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    pay = tensor_payload("trivial", {"x": (1, 64)})
    procs = {}
    for i, v in enumerate(variants):
        if v == "echo":
            e = EchoServer(loop="uvloop").start(); e.respond_with(314)
            procs[v] = (e, e.address, UNARY); continue
        if v == "echoold":
            op = subprocess.Popen([PY, "/tmp/p20/oldecho.py"], env=dict(os.environ, PYTHONPATH="/tmp/oldtree/daemon:/tmp/oldtree/clients"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            port, pid = op.stdout.readline().split()
            class _P: pass
            pp = _P(); pp.pid = int(pid); pp.stop = op.stdin.close
            procs[v] = (pp, f"127.0.0.1:{port}", UNARY); continue
        port = 50060 + i
        if v == "echopb":
            p = subprocess.Popen([PY, "/tmp/p20/echopb.py", str(port)], stderr=open("/tmp/p20/echopb.err", "w"))
            procs[v] = (p, f"127.0.0.1:{port}", INFER_METHOD); continue
        cfg = config(v, port)
        pre = WRAP.get(v.split("+")[0]) if "+" not in v else None
        if v == "serveold":
            pre = "import sys; sys.path[:0] = ['/tmp/oldtree/daemon', '/tmp/oldtree/clients']"
        cmd = ([PY, "-c", pre + "\nimport sys; sys.argv[0]='edgeinfer'; from edgeinfer.cli import main; sys.exit(main())"]
               if pre else ["/work/main/.venv/bin/edgeinfer"])
        p = subprocess.Popen(cmd + ["serve", "--config", cfg], stdout=subprocess.DEVNULL, stderr=open(f"/tmp/p20/{v}.err", "w"))
        procs[v] = (p, f"127.0.0.1:{port}", INFER_METHOD)
    time.sleep(12)
    res = {v: [] for v in variants}
    per = {v: [collections.Counter(), collections.Counter(), None, 0] for v in variants}
    for r in range(rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order:
            p, addr, method = procs[v]
            spec = LoadSpec(address=addr, method=method, mode="unary", requests=pay.requests, concurrency=conc,
                            duration_s=3.0, warmup_s=0.5, loop="uvloop", response_kind="none" if v in ("echo", "echoold", "servezero", "echopb") or v.startswith("z") else "infer")
            a = snap(p.pid); t0 = time.monotonic()
            out = run_load(spec, progress=None)
            b = snap(p.pid); t1 = time.monotonic()
            rate = out.summary.throughput
            # requests in the window ~ rate * (t1 - t0 - warmup share); use completed count if available
            nreq = rate * (t1 - t0)
            cpu = sum(b[0].values()) - sum(a[0].values())
            res[v].append((rate, cpu / os.sysconf("SC_CLK_TCK") / nreq * 1e6))
            per[v][0].update({k: b[0][k] - a[0].get(k, 0) for k in b[0]})
            per[v][1].update({k: b[1][k] - a[1].get(k, 0) for k in b[1]})
            per[v][2] = b[2]; per[v][3] += nreq
        print(f"round {r+1}: " + "  ".join(f"{v} {res[v][-1][0]:.0f} ({res[v][-1][1]:.0f}us)" for v in variants), flush=True)
    base = variants[0]
    for v in variants:
        rat = [a[0] / b[0] for a, b in zip(res[v], res[base])]
        wins = sum(x > 1 for x in rat)
        print(f"{v:18s} median {S.median([x[0] for x in res[v]]):7.0f} req/s  cpu/req {S.median([x[1] for x in res[v]]):5.0f} us  vs {base} {S.median(rat):.3f} ({wins}/{rounds} above)")
    tk = os.sysconf("SC_CLK_TCK")
    for v in variants:
        cpu, sw, n, nreq = per[v]
        print(f"-- {v}: per thread name, us/req and switches/req (threads)")
        for k, c in cpu.most_common(8):
            print(f"   {k:20s} {c / tk / nreq * 1e6:7.1f} us  {sw[k] / nreq:5.2f} sw  ({n[k]})")
    for v, (p, _, _) in procs.items():
        if v in ("echo", "echoold"): p.stop()
        else: p.terminate(); p.wait()

if __name__ == "__main__":
    main()
