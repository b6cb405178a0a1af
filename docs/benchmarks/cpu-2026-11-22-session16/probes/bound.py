"""The bound: the in-process ceiling alone vs the same ceiling while the load generator drives a bare
grpc.aio echo (answers after 50 ms, so ~150 req/s at c=8, the daemon's rate) on the same cores."""
import subprocess, sys, time, threading, statistics as S
sys.path[:0] = ["/work/main/daemon", "/work/main/clients"]
from pathlib import Path
from edgeinfer.config import load_config
from edgeinfer.bench.loadgen import LoadSpec, run_load, INFER_METHOD
from edgeinfer.bench.workload import image_payload, find_images, default_image_dir
from edgeinfer.bench.ceiling import CeilingSpec, CeilingProcess
if __name__ == "__main__":
    cfg = load_config(Path(sys.argv[1])); rounds = int(sys.argv[2])
    pay = image_payload("imagenet", find_images(default_image_dir(Path("/work/main/assets/media")))[:5])
    e = subprocess.Popen([sys.executable, "/tmp/probe/echo_delay.py", "sleep", "0.05"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mc = [x for x in cfg.models if x.name == "imagenet"][0]
    ceil = CeilingProcess(CeilingSpec(model=mc, server=cfg.server, cache_dir=None, requests=pay.requests, concurrency=[8], duration_s=6, warmup_s=0.5)).start()
    time.sleep(3)
    alone, loaded, rates = [], [], []
    for r in range(rounds):
        alone.append(ceil.point(8, quiet=True).summary.throughput)
        spec = LoadSpec(address="127.0.0.1:50051", method=INFER_METHOD, mode="unary", requests=pay.requests,
                        concurrency=8, duration_s=9.0, warmup_s=0.5, loop="uvloop", response_kind="none")
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("r", run_load(spec, progress=None))); t.start()
        time.sleep(2.5)
        loaded.append(ceil.point(8, quiet=True).summary.throughput)
        t.join(); rates.append(box["r"].summary.throughput)
        print(f"round {r+1}: ceiling alone {alone[-1]:.1f}, beside the echo's transport {loaded[-1]:.1f} ({loaded[-1]/alone[-1]:.3f}); echo {rates[-1]:.0f} req/s", flush=True)
    print(f"median ratio {S.median(l/a for l, a in zip(loaded, alone)):.3f}")
    ceil.stop(); e.terminate(); e.wait()
