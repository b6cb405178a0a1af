import asyncio, sys, time
sys.path[:0] = ["/work/main/daemon", "/work/main/clients"]
import numpy as np
from edgeinfer.config import load_config
from edgeinfer.server.app import Daemon
from edgeinfer_client._proto.edgeinfer.v1 import inference_pb2 as pb
from edgeinfer.server.converters import add_output
junk = np.ones(3 * 1024 * 1024 // 8)

def timeit(label, fn, n=3000, pol=True):
    tt = 0
    for _ in range(n):
        if pol: junk.__iadd__(1.0)
        t = time.perf_counter_ns(); fn(); tt += time.perf_counter_ns() - t
    return tt / n / 1000

async def main():
    cfg = load_config("/tmp/cfg/trivial.toml")
    d = Daemon(cfg)
    await d.start()
    for _ in range(200):
        if all(m.state.name == "READY" for m in d.registry): break
        await asyncio.sleep(0.05)
    from edgeinfer.server.servicer import InferenceServicer
    sv = InferenceServicer(d.registry, d.pipeline)
    req = pb.InferRequest(model="trivial", request_id="abc-123")
    add_output(req.tensors.tensors, "x", np.ones((1, 64), np.float32))
    class Ctx:
        def time_remaining(self): return None
    ctx = Ctx()
    await sv.Infer(req, ctx); await sv.Infer(req, ctx)
    path = sv._inline["trivial"]
    call = path._call
    data = req.SerializeToString()
    outs = call.run()
    msg = path.answer(req)
    m = d.pipeline.metrics
    clock = time.perf_counter_ns
    def timing():
        t = msg.timing
        t.preprocess_us, t.inference_us, t.postprocess_us = 3, 5, 7
        t.total_us, t.batch_size = 15, 1
    steps = {
        "parse request": lambda: pb.InferRequest.FromString(data),
        "answer_inline (all ours)": lambda: sv._answer_inline(req),
        "  path.current": path.current,
        "  path.fill": lambda: path.fill(req),
        "  call.run": call.run,
        "  _response (refill)": lambda: path._response("abc-123", outs),
        "  timing fields": timing,
        "  3 clocks": lambda: (clock(), clock(), clock()),
        "  observe_ok": lambda: m.observe_ok("trivial", (0, 1, 2, 3, 4)),
        "serialize response": msg.SerializeToString,
        "serializer fn": lambda: sv.__class__ and None,
    }
    res = {k: [] for k in steps}
    for r in range(5):
        for k, f in steps.items():
            res[k].append(timeit(k, f))
    for k, v in res.items():
        print(f"{k:28s} {np.median(v):6.2f} us polluted   tight {timeit(k, steps[k], pol=False):6.2f}")
    await d.stop()
import uvloop; uvloop.install(); asyncio.run(main())
