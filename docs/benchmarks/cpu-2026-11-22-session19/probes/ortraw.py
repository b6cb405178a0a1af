import time, numpy as np, onnxruntime as ort, inspect
print(inspect.getsource(ort.InferenceSession.run_with_iobinding))
junk = np.ones(3 * 1024 * 1024 // 8)
so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
s = ort.InferenceSession("/tmp/cfg/trivial.onnx", so, providers=["CPUExecutionProvider"])
b = s.io_binding(); x = np.ones((1, 64), np.float32); y = np.zeros((1, 64), np.float32)
b.bind_ortvalue_input("x", ort.OrtValue.ortvalue_from_numpy(x)); b.bind_ortvalue_output("y", ort.OrtValue.ortvalue_from_numpy(y))
ro = ort.RunOptions()
raw, rb = s._sess, b._iobinding
fns = {"wrapper None": lambda: s.run_with_iobinding(b), "wrapper ro": lambda: s.run_with_iobinding(b, ro),
       "raw None": lambda: raw.run_with_iobinding(rb, None), "raw ro": lambda: raw.run_with_iobinding(rb, ro)}
res = {k: [] for k in fns}
for pol in (True, False):
  for rnd in range(5):
    for k, f in fns.items():
        tt = 0
        for i in range(3000):
            if pol: junk += 1.0
            t = time.perf_counter_ns(); f(); tt += time.perf_counter_ns() - t
        res[k].append(tt / 3000 / 1000)
  for k, v in res.items():
    print(f"polluted={pol} {k:14s} {np.median(v):6.2f} us")
  res = {k: [] for k in fns}
