"""8 threads calling ServedModel.predict on imagenet; optionally cap concurrent runner calls."""
import sys, threading, time, os
from pathlib import Path
sys.path.insert(0, "/work/main/daemon")
from edgeinfer.config import load_config
from edgeinfer.pipeline.model import ServedModel, EncodedImage
from edgeinfer.pipeline.postprocess import Options
import dataclasses

cfg = load_config(Path("/work/main/configs/dev.toml"))
mcfg = [m for m in cfg.models if m.name == "imagenet"][0]
intra = int(os.environ.get("INTRA", "0")); spin = os.environ.get("SPIN", "1") == "1"
inst = int(os.environ.get("INST", "2"))
ort = dataclasses.replace(mcfg.onnxruntime, intra_op_threads=intra, intra_op_spinning=spin, instances=inst)
mcfg = dataclasses.replace(mcfg, onnxruntime=ort)
model = ServedModel(mcfg, cfg.server, None)
model.load()
from edgeinfer.bench.workload import find_images, image_payload
from edgeinfer_client._proto.edgeinfer.v1 import inference_pb2 as pb
pay = image_payload("imagenet", find_images(Path("/work/main/assets/media")))
imgs = [EncodedImage(pb.InferRequest.FromString(r).image) for r in pay.requests]
print(pay.desc if hasattr(pay, "desc") else "", len(imgs), [len(i.data) for i in imgs])
opts = Options()

def point(cap, dur=4.0, n=8):
    sem = threading.Semaphore(cap) if cap else None
    runner = model.runner
    count = [0] * n
    end = time.monotonic() + dur + 0.5
    start_measure = time.monotonic() + 0.5
    def w(k):
        i = k
        while time.monotonic() < end:
            item = imgs[i % len(imgs)]; i += 1
            prepared = model.prepare(item)
            if sem:
                with sem:
                    out = runner.infer(prepared.feeds)
            else:
                out = runner.infer(prepared.feeds)
            model.finish(out, prepared, opts)
            if time.monotonic() >= start_measure:
                count[k] += 1
    ts = [threading.Thread(target=w, args=(k,)) for k in range(n)]
    c0 = time.process_time()
    [t.start() for t in ts]; [t.join() for t in ts]
    return sum(count) / dur, (time.process_time() - c0) / max(sum(count), 1) * 1e3

caps = [int(c) for c in os.environ.get("CAPS", "0,2,1,3,0,2,1,3").split(",")]
for cap in caps:
    r, cpu = point(cap)
    print(f"intra={intra} spin={spin} inst={inst} cap={cap}: {r:7.1f} img/s  cpu {cpu:.2f} ms/img", flush=True)
