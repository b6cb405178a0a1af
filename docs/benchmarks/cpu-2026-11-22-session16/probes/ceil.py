import os, sys, time, threading
sys.path[:0] = ["/work/main/daemon", "/work/main/clients"]
from pathlib import Path
from edgeinfer.config import load_config
from edgeinfer.pipeline.model import ServedModel
from edgeinfer.server.converters import request_input, request_options
from edgeinfer.bench.workload import image_payload, find_images, default_image_dir
from edgeinfer_client._proto.edgeinfer.v1 import inference_pb2 as pb

def ticks():
    out = {}
    for t in os.listdir("/proc/self/task"):
        f = open(f"/proc/self/task/{t}/stat").read().rsplit(")", 1)[1].split()
        out[int(t)] = int(f[11]) + int(f[12])
    return out

cfg = load_config(Path(sys.argv[1]))
mc = [m for m in cfg.models if m.name == "imagenet"][0]
m = ServedModel(mc, cfg.server, None); m.load()
pay = image_payload("imagenet", find_images(default_image_dir(Path("/work/main/assets/media")))[:5])
msgs = [pb.InferRequest.FromString(r) for r in pay.requests]
items = [request_input(x) for x in msgs]; opts = request_options(msgs[0])
n = [0]; stop = [False]
def w(k):
    i = k
    while not stop[0]:
        m.predict(items[i % len(items)], opts); i += 1; n[0] += 1
ths = [threading.Thread(target=w, args=(k,)) for k in range(int(sys.argv[2]) if len(sys.argv) > 2 else 8)]
for t in ths: t.start()
time.sleep(2)
a, n0, t0 = ticks(), n[0], time.monotonic()
time.sleep(10)
b, n1, t1 = ticks(), n[0], time.monotonic()
stop[0] = True
for t in ths: t.join()
hz = os.sysconf("SC_CLK_TCK"); el = t1 - t0; rate = (n1 - n0) / el
tot = sum(b[k] - a.get(k, 0) for k in b) / hz / el
print(f"ceiling {rate:.1f}/s cores {tot:.3f} per image {tot / rate * 1e3:.3f} ms")
for k in sorted(b, key=lambda k: -(b[k] - a.get(k, 0))):
    print(f"  {k} {(b[k] - a.get(k, 0)) / hz / el:.3f}")
m.unload()
