"""Client CPU per request: grpc.aio (as the load generator) vs sync blocking calls in threads."""
import os, sys, time, threading, multiprocessing as mp
sys.path[:0] = ["/work/main/daemon", "/work/main/clients"]
from pathlib import Path
METHOD = "/edgeinfer.v1.Inference/Infer"

def child(kind, reqs, share, dur, q):
    import grpc
    opts = [("grpc.max_receive_message_length", 1 << 26), ("grpc.max_send_message_length", 1 << 26)]
    n = [0]
    if kind == "sync":
        ch = grpc.insecure_channel("127.0.0.1:50051", options=opts)
        call = ch.unary_unary(METHOD)
        call(reqs[0])
        stop = time.monotonic() + 1 + dur
        def w(k):
            i = k
            while time.monotonic() < stop:
                call(reqs[i % len(reqs)], timeout=60); i += 1; n[0] += 1
        ths = [threading.Thread(target=w, args=(k,)) for k in range(share)]
        for th in ths: th.start()
        time.sleep(1); c0 = os.times(); n0 = n[0]; t0 = time.monotonic()
        time.sleep(dur - 0.2); c1 = os.times(); n1 = n[0]; t1 = time.monotonic()
        for th in ths: th.join()
    else:
        import asyncio, uvloop
        async def main():
            async with grpc.aio.insecure_channel("127.0.0.1:50051", options=opts) as ch:
                call = ch.unary_unary(METHOD)
                await call(reqs[0])
                stop = time.monotonic() + 1 + dur
                async def w(k):
                    i = k
                    while time.monotonic() < stop:
                        await call(reqs[i % len(reqs)], timeout=60); i += 1; n[0] += 1
                tasks = [asyncio.create_task(w(k)) for k in range(share)]
                await asyncio.sleep(1); c0 = os.times(); n0 = n[0]; t0 = time.monotonic()
                await asyncio.sleep(dur - 0.2); c1 = os.times(); n1 = n[0]; t1 = time.monotonic()
                await asyncio.gather(*tasks)
                return c0, c1, n0, n1, t0, t1
        uvloop.install()
        c0, c1, n0, n1, t0, t1 = asyncio.run(main())
    q.put(((c1.user + c1.system) - (c0.user + c0.system), n1 - n0, t1 - t0))

if __name__ == "__main__":
    from edgeinfer.bench.workload import image_payload, find_images, default_image_dir
    kind = sys.argv[1]; procs = int(sys.argv[2]); conc = int(sys.argv[3])
    if len(sys.argv) > 4 and sys.argv[4] == "trivial":
        from edgeinfer.bench.workload import tensor_payload
        reqs = tensor_payload("trivial", {"x": (1, 64)}).requests
    else:
        reqs = image_payload(sys.argv[4] if len(sys.argv) > 4 else "imagenet", find_images(default_image_dir(Path("/work/main/assets/media")))[:5]).requests
    ctx = mp.get_context("spawn"); q = ctx.Queue()
    ps = [ctx.Process(target=child, args=(kind, reqs, conc // procs, 8.0, q)) for _ in range(procs)]
    for p in ps: p.start()
    res = [q.get() for _ in ps]
    for p in ps: p.join()
    cpu = sum(r[0] for r in res); n = sum(r[1] for r in res); el = max(r[2] for r in res)
    print(f"{kind} procs={procs} c={conc}: {n / el:.1f} req/s, client {cpu / el:.3f} cores, {cpu / n * 1e6:.0f} us/req")
