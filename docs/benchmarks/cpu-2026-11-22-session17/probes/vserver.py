"""Variant servers between the minimal ORT handler and the daemon (probe). argv: MODE PORT"""
import asyncio, sys
sys.path[:0] = ["/work/main/daemon", "/work/main/clients"]
import grpc, uvloop, numpy as np
from edgeinfer_client._proto.edgeinfer.v1 import inference_pb2 as pb
from edgeinfer.server.converters import add_output
MODE, PORT = sys.argv[1], sys.argv[2]

async def main():
    from edgeinfer.config import load_config
    from edgeinfer.server.app import Daemon
    cfg = load_config("/tmp/cfg/trivial.toml")
    cfg.server.listen = f"127.0.0.1:{PORT}"
    if MODE == "daemon_noreflect":
        cfg.server.reflection = False
    if MODE.startswith("daemon"):
        d = Daemon(cfg)
        if MODE == "daemon_nohealth":
            import edgeinfer.server.app as app
            app.health_pb2_grpc.add_HealthServicer_to_server = lambda *a: None
            cfg.server.reflection = False
        print("ready", flush=True)
        if MODE == "daemon_timed":
            import time
            from edgeinfer.server import servicer as svm, inline as inm
            acc = {"n": 0, "infer": 0, "answer": 0, "fill": 0, "run": 0, "resp": 0, "ser": 0}
            clock = time.perf_counter_ns
            orig_infer = svm.InferenceServicer.Infer
            async def Infer(self, request, context):
                t = clock(); r = await orig_infer(self, request, context); acc["infer"] += clock() - t; acc["n"] += 1; return r
            svm.InferenceServicer.Infer = Infer
            for cls, name, key in ((inm.InlineTensorPath, "answer", "answer"), (inm.InlineTensorPath, "fill", "fill"), (inm.InlineTensorPath, "_response", "resp")):
                def wrap(f, key=key):
                    def g(*a, **k):
                        t = clock(); r = f(*a, **k); acc[key] += clock() - t; return r
                    return g
                setattr(cls, name, wrap(getattr(cls, name)))
            from edgeinfer.backends.onnxruntime import bound_call as bc
            orun = bc.CpuBoundCall.run
            def run(self):
                t = clock(); r = orun(self); acc["run"] += clock() - t; return r
            bc.CpuBoundCall.run = run
            async def rep():
                while True:
                    await asyncio.sleep(3)
                    n = max(acc["n"], 1)
                    print({k: round(v / n / 1000, 1) for k, v in acc.items() if k != "n"}, acc["n"], flush=True, file=sys.stderr)
            asyncio.ensure_future(rep())
        if MODE == "daemon_freeze":
            async def freeze():
                await asyncio.sleep(5)
                import gc; gc.freeze()
            asyncio.ensure_future(freeze())
        if MODE == "daemon_gcstat":
            import gc, time
            stats = [0, 0, 0]; tt = [0.0]
            def cb(phase, info):
                if phase == "start": tt.append(time.perf_counter()); stats[info["generation"]] += 1
                else: tt[0] += time.perf_counter() - tt.pop()
            gc.callbacks.append(cb)
            async def rep():
                while True:
                    await asyncio.sleep(3)
                    print("gc", stats, round(tt[0]*1e3, 1), "ms", flush=True, file=sys.stderr)
            asyncio.ensure_future(rep())
        await d.run(); return
    if MODE.startswith("echo"):
        blob = bytes(330)
        async def e(request, context):
            return blob
        eh = grpc.unary_unary_rpc_method_handler(e)
        s = grpc.aio.server()
        s.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("edgeinfer.bench.Echo", {"Unary330": eh}),))
        if MODE == "echoreg":
            s.add_registered_method_handlers("edgeinfer.bench.Echo", {"Unary330": eh})
        s.add_insecure_port(f"127.0.0.1:{PORT}")
        await s.start(); print("ready", flush=True); await s.wait_for_termination()
    if MODE == "batchy":
        import onnxruntime as ort, time
        so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
        sess = ort.InferenceSession("/tmp/cfg/trivial.onnx", so, providers=["CPUExecutionProvider"])
        tmpl = pb.InferResponse(model="trivial", model_version="1", backend="onnxruntime", precision="fp32")
        add_output(tmpl.outputs, "y", np.ones((1, 64), np.float32)); out = tmpl.outputs[0]
        loop = asyncio.get_running_loop()
        pending = []; sizes = []
        def flush():
            items = pending[:]; pending.clear(); sizes.append(len(items))
            x = np.concatenate([np.frombuffer(r.tensors.tensors[0].data, np.float32).reshape(1, 64) for r, f in items])
            y = sess.run(None, {"x": x})[0]
            for i, (r, f) in enumerate(items):
                tmpl.request_id = r.request_id; out.data = y[i:i + 1].tobytes(); f.set_result(tmpl.SerializeToString())
        async def h(request, context):
            f = loop.create_future(); pending.append((request, f))
            if len(pending) == 1: loop.call_soon(flush)
            return await f
        async def rep():
            while True:
                await asyncio.sleep(3)
                if sizes: print("mean batch", sum(sizes) / len(sizes), len(sizes), flush=True, file=sys.stderr)
                sizes.clear()
        asyncio.ensure_future(rep())
        eh = grpc.unary_unary_rpc_method_handler(h, request_deserializer=pb.InferRequest.FromString)
        s = grpc.aio.server()
        s.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("edgeinfer.v1.Inference", {"Infer": eh}),))
        s.add_insecure_port(f"127.0.0.1:{PORT}")
        await s.start(); print("ready", flush=True); await s.wait_for_termination()
    # minimal servers around the daemon's servicer
    d = Daemon(cfg)
    d.registry.start_loading()
    while any(m.state.name != "READY" for m in d.registry):
        await asyncio.sleep(0.05)
    from edgeinfer.server.servicer import InferenceServicer
    sv = InferenceServicer(d.registry, d.pipeline)
    s = grpc.aio.server()
    if MODE == "servicer":
        from edgeinfer.server.servicer import add_to_server; add_to_server(sv, s)
    elif MODE in ("path", "pathraw", "pathmut", "pathmutreg"):
        req = pb.InferRequest(model="trivial"); add_output(req.tensors.tensors, "x", np.ones((1, 64), np.float32))
        class C:
            def time_remaining(self): return None
        await sv.Infer(req, C())
        path = sv._inline["trivial"]
        if MODE == "path":
            async def h(request, context):
                return path.answer(request)
            hh = grpc.unary_unary_rpc_method_handler(h, request_deserializer=pb.InferRequest.FromString,
                                                      response_serializer=pb.InferResponse.SerializeToString)
        elif MODE.startswith("pathmut"):
            import time
            tmpl = path.answer(req); out = tmpl.outputs[0]; call = path._call; tm = tmpl.timing
            clock = time.perf_counter_ns
            async def h(request, context):
                s0 = clock()
                if not path.fill(request): return None
                t0 = clock()
                outs = call.run()
                t1 = clock()
                tmpl.request_id = request.request_id
                out.data = outs["y"].tobytes()
                t2 = clock()
                tm.preprocess_us, tm.inference_us, tm.postprocess_us, tm.total_us = (t0-s0)//1000, (t1-t0)//1000, (t2-t1)//1000, (t2-s0)//1000
                return tmpl.SerializeToString()
            hh = grpc.unary_unary_rpc_method_handler(h, request_deserializer=pb.InferRequest.FromString)
        else:
            resp = path.answer(req).SerializeToString()
            call = path._call
            async def h(request, context):
                path.fill(request); call.run()
                return resp
            hh = grpc.unary_unary_rpc_method_handler(h, request_deserializer=pb.InferRequest.FromString)
        s.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("edgeinfer.v1.Inference", {"Infer": hh}),))
        if MODE.endswith("reg"):
            s.add_registered_method_handlers("edgeinfer.v1.Inference", {"Infer": hh})
    s.add_insecure_port(f"127.0.0.1:{PORT}")
    await s.start(); print("ready", flush=True); await s.wait_for_termination()
uvloop.install(); asyncio.run(main())
