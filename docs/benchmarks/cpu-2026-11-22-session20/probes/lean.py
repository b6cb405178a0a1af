# Probe prelude: a lean short path for one bound single-input model (what fewer Python frames buy in place).
import time
from collections import deque
from edgeinfer.server import servicer as S, inline as I

_orig_learn = S.InferenceServicer._learn_inline
S.InferenceServicer._lean = {}

def _make(path):
    call, single = path._call, path._single
    if call is None or single is None or call._allocated or len(call._ours) != 1:
        return None
    model, runner, READY = path.model, path.runner, I.ModelState.READY
    name, code, nbytes, shape, buf = single.spec.name, single.code, single.nbytes, single.shape, single.buffer
    import os
    A = os.environ.get('LEAN_A') == '1'
    run = call.run if A else call._run
    if os.environ.get('LEAN_NORT') == '1':
        import numpy as np
        (xin,) = call.inputs.values()
        run = lambda: np.add(xin, 1.0, out=oarr)
    metrics = path.metrics
    (oname, oarr), = call._ours.items()
    msg = path._response("", call._ours)
    tensor = path._reply._layout[0][3]
    timing = msg.timing
    timing.batch_size = 1
    clock = time.perf_counter_ns
    rows = deque(); append = rows.append
    name_m = path.name
    ser = msg.SerializeToString
    def lean(request):
        if model.runner is not runner or model.state is not READY:
            return None
        tensors = request.tensors.tensors
        if len(tensors) != 1:
            return None
        t = tensors[0]
        data = t.data
        if t.name != name or t.dtype != code or len(data) != nbytes or t.shape != shape:
            return None
        start = clock()
        buf[:] = data
        t0 = clock()
        run()
        t1 = clock()
        tensor.data = oarr.tobytes()
        msg.request_id = request.request_id
        t2 = clock()
        pre, inf, post, total = (t0 - start) // 1000, (t1 - t0) // 1000, (t2 - t1) // 1000, (t2 - start) // 1000
        timing.preprocess_us, timing.inference_us, timing.postprocess_us, timing.total_us = pre, inf, post, total
        if A:
            metrics.observe_ok(name_m, (0, pre, inf, post, total))
        else:
            append((0, pre, inf, post, total))
            if len(rows) > 4096:
                rows.clear()
        return ser()
    return lean

def _learn_inline(self, model):
    _orig_learn(self, model)
    path = self._inline.get(model.name)
    if path is not None and model.name not in self._lean:
        f = _make(path)
        if f is not None:
            self._lean[model.name] = f

S.InferenceServicer._learn_inline = _learn_inline
_orig_infer = S.InferenceServicer.Infer

async def Infer(self, request, context):
    lean = self._lean.get(request.model)
    if lean is not None:
        out = lean(request)
        if out is not None:
            return out
    return await _orig_infer(self, request, context)

S.InferenceServicer.Infer = Infer
