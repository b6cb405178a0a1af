"""Interleaved req/s of variant servers, trivial model. argv: rounds conc mode... (probe)"""
import os, subprocess, sys, time, statistics as S
sys.path[:0] = ["/work/main/daemon", "/work/main/clients"]
from edgeinfer.bench.loadgen import LoadSpec, run_load, INFER_METHOD
from edgeinfer.bench.workload import tensor_payload
from edgeinfer.bench.echo import EchoServer, UNARY

def cpu(pid):
    tot = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try: x = open(f"/proc/{pid}/task/{t}/stat").read().rsplit(")", 1)[1].split()
        except OSError: continue
        tot += int(x[11]) + int(x[12])
    return tot / os.sysconf("SC_CLK_TCK")

def main():
    rounds, conc, modes = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    pay = tensor_payload("trivial", {"x": (1, 64)})
    procs = {}
    for i, m in enumerate(modes):
        if m in ("echo", "echoold"):
            continue
        port = 50060 + i
        if m in ("serve", "serveold", "serve2p", "servefull"):
            txt = open("/tmp/cfg/trivial.toml").read().replace("127.0.0.1:50051", f"127.0.0.1:{port}")
            if m == "servefull":
                dev = open("/work/main/configs/dev.toml").read().split("[[models]]", 1)[1]
                dev = dev.replace('"../assets/', '"/work/main/assets/')
                txt = txt + "\n[[models]]" + dev
            if m == "serve2p":
                txt = txt.replace("[server]\n", "[server]\nprocesses = 2\n")
            cmd = ["/work/main/.venv/bin/edgeinfer"] if m in ("serve", "serve2p", "servefull") else ["/work/main/.venv/bin/python", "-c", "import sys; sys.path[:0]=['/tmp/oldtree/daemon','/tmp/oldtree/clients']; sys.argv[0]='edgeinfer'; from edgeinfer.cli import main; sys.exit(main())"]
            open(f"/tmp/probe/{m}.toml", "w").write(txt)
            p = subprocess.Popen(cmd + ["serve", "--config", f"/tmp/probe/{m}.toml"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            p = subprocess.Popen([sys.executable, "/tmp/probe/vserver.py", m, str(port)], stdout=subprocess.DEVNULL, stderr=open(f"/tmp/probe/{m}.err", "w"))
        procs[m] = (p, f"127.0.0.1:{port}")
    if "echoold" in modes:
        op = subprocess.Popen([sys.executable, "/tmp/probe/oldecho.py"], env=dict(os.environ, PYTHONPATH="/tmp/oldtree/daemon:/tmp/oldtree/clients"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        port, pid = op.stdout.readline().split()
        class P: pass
        pp = P(); pp.pid = int(pid); pp.stop = lambda: op.stdin.close()
        procs["echoold"] = (pp, f"127.0.0.1:{port}")
    echo = EchoServer(loop="uvloop").start() if "echo" in modes else None
    if echo: echo.respond_with(314); procs["echo"] = (echo, echo.address)
    time.sleep(10)
    res = {m: [] for m in modes}
    for r in range(rounds):
        order = modes if r % 2 == 0 else modes[::-1]
        for m in order:
            p, addr = procs[m]
            pid = p.pid
            method = (UNARY if m == "echo" else "/edgeinfer.bench.Echo/Unary314") if m.startswith("echo") else INFER_METHOD
            spec = LoadSpec(address=addr, method=method, mode="unary", requests=pay.requests, concurrency=conc,
                            duration_s=3.0, warmup_s=0.5, loop="uvloop", response_kind="none" if m.startswith("echo") else "infer")
            c0 = cpu(pid); t0 = time.monotonic()
            out = run_load(spec, progress=None)
            c1 = cpu(pid); t1 = time.monotonic()
            rate = out.summary.throughput
            res[m].append((rate, (c1 - c0) / (t1 - t0) / rate * 1e6 if rate else 0))
        print(f"round {r+1}: " + "  ".join(f"{m} {res[m][-1][0]:.0f} ({res[m][-1][1]:.0f}us)" for m in modes), flush=True)
    base = modes[0]
    for m in modes:
        rat = [a[0] / b[0] for a, b in zip(res[m], res[base])]
        print(f"{m:18s} median {S.median([x[0] for x in res[m]]):7.0f} req/s  cpu/req {S.median([x[1] for x in res[m]]):5.0f} us  vs {base} {S.median(rat):.3f}")
    for m, (p, _) in procs.items():
        if m in ("echo", "echoold"): p.stop()
        else: p.terminate(); p.wait()

if __name__ == '__main__':
    main()
