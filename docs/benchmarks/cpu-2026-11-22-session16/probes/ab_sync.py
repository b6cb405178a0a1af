import os, subprocess, sys, time, statistics as S
sys.path[:0] = ["/work/main/daemon", "/work/main/clients"]
from pathlib import Path
from edgeinfer.config import load_config
from edgeinfer.bench.loadgen import LoadSpec, run_load, INFER_METHOD
from edgeinfer.bench.workload import image_payload, find_images, default_image_dir
from edgeinfer.bench.ceiling import CeilingSpec, CeilingProcess

def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        x = f.read().rsplit(")", 1)[1].split()
    return (int(x[11]) + int(x[12])) / os.sysconf("SC_CLK_TCK")

if __name__ == "__main__":
    cfgp = sys.argv[1]; rounds = int(sys.argv[2])
    cfg = load_config(Path(cfgp))
    pay = image_payload("imagenet", find_images(default_image_dir(Path("/work/main/assets/media")))[:5])
    d = subprocess.Popen(["/work/main/.venv/bin/edgeinfer", "serve", "--config", cfgp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s = subprocess.Popen([sys.executable, "/tmp/probe/sync_img.py", cfgp, "50052"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    s.stdout.readline()
    mc = [x for x in cfg.models if x.name == "imagenet"][0]
    ceil = CeilingProcess(CeilingSpec(model=mc, server=cfg.server, cache_dir=None, requests=pay.requests, concurrency=[8], duration_s=3, warmup_s=0.5)).start()
    time.sleep(8)
    res = {"ceiling": [], "aio": [], "sync": []}
    for r in range(rounds):
        order = [("ceiling", None), ("aio", 50051), ("sync", 50052)]
        if r % 2: order = order[::-1]
        for name, port in order:
            if port is None:
                p = ceil.point(8, quiet=True); res[name].append((p.summary.throughput, 0)); continue
            pid = d.pid if name == "aio" else s.pid
            spec = LoadSpec(address=f"127.0.0.1:{port}", method=INFER_METHOD, mode="unary", requests=pay.requests,
                            concurrency=8, duration_s=3.0, warmup_s=0.5, loop="uvloop", response_kind="infer")
            c0 = [0.0]
            out = run_load(spec, progress=None)
            res[name].append((out.summary.throughput, 0))
        c, a, y = res["ceiling"][-1][0], res["aio"][-1][0], res["sync"][-1][0]
        print(f"round {r+1}: ceiling {c:.1f}  aio {a:.1f} ({a/c:.3f})  sync {y:.1f} ({y/c:.3f})", flush=True)
    ra = [a[0]/c[0] for a, c in zip(res["aio"], res["ceiling"])]; rs = [a[0]/c[0] for a, c in zip(res["sync"], res["ceiling"])]
    print(f"median aio/ceiling {S.median(ra):.3f}  sync/ceiling {S.median(rs):.3f}")
    ceil.stop(); d.terminate(); s.terminate(); d.wait(); s.wait()
