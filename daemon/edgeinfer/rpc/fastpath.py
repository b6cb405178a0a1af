"""The event loop's short path for tiny raw-tensor models: one signature check, one runner call, one response.

A model whose lane runs inline (serving/lanes.py: its batch-1 warm-up took
less than [server] inline_max_us) costs more in the daemon's own layers than in
the runtime: measured on the 2-core dev box for y = x + 1 on 64 floats, in a
tight loop, the general path took 70-74 us a request (domain objects for the
input, the prepared feeds, the prediction and its timing, then the response),
this path ~40 us, and ONNX Runtime's `session.run` alone ~8 us. At concurrency
8 the event loop is the bottleneck, so that difference is throughput.

It takes only what the general path would answer the same way: a raw-output
model (`postprocess.task = "raw"`, which ignores options), tensors that match
the model's inputs exactly (names, dtypes, shapes, byte counts) at batch 1.
Anything else returns None and goes the general way, which also words every
error: there is one source of error messages, and this path never has to
repeat it.

Where the runner offers a BoundCall (ONNX Runtime on the CPU: IO binding on
buffers made once, runtime/onnxruntime/bound_call.py), the request's bytes are
copied into the bound inputs and the call is the runtime's Run() alone. Measured
on the dev box with the trivial model at concurrency 8, the
daemon's event-loop thread spent ~314 us a request against ~290 for a minimal
ORT handler; the runtime call inside a request took ~35 us, of which
`session.run`'s own conversions are most (see bound_call.py).

The response is one message per path, refilled for each request (`_Reply`):
building an InferResponse and its output tensors anew cost ~20 us of the event
loop's CPU a request at concurrency 8, dev box, minimal servers of
the trivial model: 220 against 201 us of server CPU a request), refilling the
kept one a few. So `answer()` returns a message the next call overwrites: the
caller serializes or copies it first (Infer serializes it at once; a stream's
StreamResponse(response=...) copies it).
"""
from __future__ import annotations

import math
import time
from typing import Optional

import numpy as np

from edgeinfer_proto.tensors import LITTLE_ENDIAN, PB_DTYPE
from edgeinfer_proto.edgeinfer.v1 import inference_pb2 as pb

from edgeinfer.runtime.base import BoundCall, Runner, TensorSpec
from edgeinfer.model.served import ServedModel
from edgeinfer.model.types import ModelState
from edgeinfer.rpc.converters import add_output


def _on_the_wire_as_is(array: np.ndarray) -> bool:
    """Whether the array's bytes are the wire's (a proto dtype, little-endian), so refilling copies them as they are."""
    return array.dtype in PB_DTYPE and array.dtype.byteorder != ">"


class _Reply:
    """An InferResponse for one request's outputs; the path keeps it and refills it while the outputs
    keep their names, dtypes and shapes."""

    __slots__ = ("msg", "_layout")

    def __init__(self, fields: dict, request_id: str, outputs: dict[str, np.ndarray]):
        self.msg = pb.InferResponse(request_id=request_id, **fields)
        self._layout = [(name, arr.dtype, arr.shape, add_output(self.msg.outputs, name, arr))
                        for name, arr in outputs.items()]

    @staticmethod
    def keeps(outputs: dict[str, np.ndarray]) -> bool:
        """Whether outputs like these can be refilled: those needing a dtype conversion are built anew each time."""
        return all(_on_the_wire_as_is(arr) for arr in outputs.values())

    def refill(self, request_id: str, outputs: dict[str, np.ndarray]) -> bool:
        """Put the request's id and outputs in the kept message; False if the outputs' layout changed
        (then the message holds a mix: the caller makes a new _Reply)."""
        if len(outputs) != len(self._layout):
            return False
        for (name, arr), (kept_name, dtype, shape, tensor) in zip(outputs.items(), self._layout):
            if name != kept_name or arr.dtype != dtype or arr.shape != shape:
                return False
            tensor.data = arr.tobytes()
        self.msg.request_id = request_id
        return True


class _Signature:
    """What one input tensor must look like to take the short path; with a bound buffer, where it goes."""

    __slots__ = ("spec", "code", "dtype", "batched", "shape", "nbytes", "buffer")

    def __init__(self, spec: TensorSpec, bound: Optional[np.ndarray] = None):
        self.spec = spec
        self.dtype = np.dtype(spec.dtype)
        self.code = PB_DTYPE.get(self.dtype.newbyteorder("="))
        self.batched = spec.dynamic_batch
        # A bound input has one shape (batch 1), so one comparison checks it. A list, because
        # protobuf's repeated field equals a list (not a tuple) and comparing it so copies nothing.
        self.shape = list(bound.shape) if bound is not None else None
        self.nbytes = bound.nbytes if bound is not None else None
        self.buffer = memoryview(bound).cast("B") if bound is not None else None

    def array(self, t: pb.Tensor) -> Optional[np.ndarray]:
        """The tensor as an array when it fits exactly (batch 1 on a dynamic batch axis), else None."""
        if t.dtype != self.code:
            return None
        shape = tuple(t.shape)
        if not self.spec.fits(shape) or (self.batched and shape[0] != 1) or (shape and min(shape) < 0):
            return None
        data = t.data
        if len(data) != math.prod(shape) * self.dtype.itemsize:
            return None
        return np.frombuffer(data, self.dtype).reshape(shape)

    def fill(self, t: pb.Tensor) -> bool:
        """Copy the tensor into the bound input when it fits exactly; False (nothing promised) otherwise."""
        data = t.data
        if t.dtype != self.code or len(data) != self.nbytes or t.shape != self.shape:
            return False
        self.buffer[:] = data
        return True


class InlineTensorPath:
    """The short path for one model's current runner; `metrics`: edgeinfer.observe.metrics.Metrics or None."""

    def __init__(self, model: ServedModel, runner: Runner, metrics=None):
        self.model = model
        self.runner = runner
        self.name = model.name
        self.metrics = metrics
        info = runner.info
        self._fields = dict(model=model.name, model_version=model.cfg.version,
                            backend=info.backend, precision=info.precision)
        # Made once per path: the path serves from the event loop only, one request at a time.
        self._call: Optional[BoundCall] = runner.bound_call()
        bound = self._call.inputs if self._call is not None else {}
        self._inputs = {s.name: _Signature(s, bound.get(s.name)) for s in runner.inputs}
        # The common model of one input skips the loop and the duplicate-name check.
        self._single = next(iter(self._inputs.values())) if self._call is not None and len(self._inputs) == 1 else None
        self._reply: Optional[_Reply] = None  # made by the first answer whose outputs can be kept

    @staticmethod
    def suits(model: ServedModel) -> bool:
        # Big-endian hosts need the byte-order conversion that the general converters make.
        return model.cfg.postprocess.task == "raw" and LITTLE_ENDIAN

    def current(self) -> bool:
        """Whether the model still serves with the runner this path was made for (not reloaded or stopped)."""
        model = self.model
        return model.runner is self.runner and model.state is ModelState.READY and not model.retired

    def feeds(self, request: pb.InferRequest) -> Optional[dict[str, np.ndarray]]:
        """The request's tensors as feeds when every one fits the model exactly, else None."""
        tensors = request.tensors.tensors  # none for a request with an image, as in fill()
        inputs = self._inputs
        if len(tensors) != len(inputs):
            return None
        feeds = {}
        for t in tensors:
            sig = inputs.get(t.name)
            array = sig.array(t) if sig is not None else None
            if array is None:
                return None
            feeds[t.name] = array
        return feeds if len(feeds) == len(inputs) else None  # a name sent twice

    def fill(self, request: pb.InferRequest) -> bool:
        """Copy the request's tensors into the bound call's inputs when every one fits exactly."""
        # No oneof check: a request that carries an image (or nothing) reads as no tensors here.
        tensors = request.tensors.tensors
        single = self._single
        if single is not None:
            if len(tensors) != 1:
                return False
            t = tensors[0]
            return t.name == single.spec.name and single.fill(t)
        inputs = self._inputs
        if len(tensors) != len(inputs):
            return False
        for t in tensors:
            sig = inputs.get(t.name)
            if sig is None or not sig.fill(t):
                return False
        return len({t.name for t in tensors}) == len(tensors)  # a name sent twice

    def _response(self, request_id: str, outputs: dict[str, np.ndarray]) -> pb.InferResponse:
        """The response message holding the outputs: the kept one where it fits, else a new one (kept
        when its outputs can be refilled later)."""
        reply = self._reply
        if reply is not None and reply.refill(request_id, outputs):
            return reply.msg
        reply = _Reply(self._fields, request_id, outputs)
        if _Reply.keeps(outputs):
            self._reply = reply
        return reply.msg

    def answer(self, request: pb.InferRequest) -> Optional[pb.InferResponse]:
        """The response, or None when the request does not fit this path (then nothing was run or counted).

        The message may be the path's kept one, which the next call overwrites:
        serialize or copy it before answering another request.

        Raises:
            InferenceError: the runtime failed (the caller counts and translates it).
        """
        clock = time.perf_counter_ns
        start = clock()
        call = self._call
        if call is not None:
            if not self.fill(request):
                return None
            t0 = clock()
            outputs = call.run()  # its own buffers: tobytes() below copies them
        else:
            feeds = self.feeds(request)
            if feeds is None:
                return None
            t0 = clock()
            outputs = self.runner.infer_impl(feeds)  # feeds already match runner.inputs exactly
        t1 = clock()
        msg = self._response(request.request_id, outputs)
        t2 = clock()
        pre, inf, post, total = (t0 - start) // 1000, (t1 - t0) // 1000, (t2 - t1) // 1000, (t2 - start) // 1000
        timing = msg.timing
        timing.preprocess_us, timing.inference_us, timing.postprocess_us = pre, inf, post
        timing.total_us, timing.batch_size = total, 1
        if self.metrics is not None:
            self.metrics.observe_ok(self.name, (0, pre, inf, post, total))
        return msg
