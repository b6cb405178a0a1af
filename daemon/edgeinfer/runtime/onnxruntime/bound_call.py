"""Batch-1 calls of a CPU session through IO binding on buffers made once.

`session.run` turns every feed into a new OrtValue, allocates every output and
wraps each in a new array, on every call. With the inputs and outputs bound
once, a call is ORT's Run() alone. Measured on the 2-core dev box for
y = x + 1 on 64 floats: `session.run` 7.2 us in a tight loop and
13.4 us with the caches flushed between calls (as between requests, where gRPC
and the event loop run in between); the bound call 2.1 and 4.0 us. For a tiny
model served inline that difference is a large part of the daemon's cost over
the bare transport (docs/decisions.md"Throughput").

ORT reads the input arrays' memory itself (OrtValue.ortvalue_from_numpy on the
CPU shares it), so a caller writes into `inputs[name]` and runs. Outputs whose
shape is fixed at batch 1 land in our arrays; an output with another dynamic
axis is allocated by ORT on each call. Such an output is bound again before
every call: after a run the binding holds the array ORT allocated and treats it
as pre-allocated next time, so a call whose output has another length fails
(found by tests/runtime/onnxruntime/test_ort_bound_call.py).

The call goes to the session's compiled binding directly, with one RunOptions
made once (`_direct_run`). ONNX Runtime's Python `run_with_iobinding` checks for
WebGPU graph capture on every call, and without RunOptions the binding builds
a default one each time. Measured on the dev box for the same model with the
caches flushed between calls: 8.6 us a call through the Python
method, 7.6 direct without RunOptions, 5.3 direct with a kept RunOptions
(2.5, 2.2 and 1.4 in a tight loop). Passing RunOptions to the Python method
costs more, not less (43 us: its capture check looks up a missing config
entry, which raises). Where the private names are missing (another ORT
release), the public method serves.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import numpy as np

from edgeinfer.errors import InferenceError
from edgeinfer.runtime.base import BoundCall, TensorSpec, batch_one_shape


def _direct_run(session, binding) -> Callable[[], None]:
    """A call that runs `binding` on `session`: the compiled method with kept RunOptions where this
    ORT release has the private names it needs, else the public method (see the module docstring)."""
    import onnxruntime as ort

    compiled = getattr(getattr(session, "_sess", None), "run_with_iobinding", None)
    compiled_binding = getattr(binding, "_iobinding", None)
    if compiled is None or compiled_binding is None:
        return functools.partial(session.run_with_iobinding, binding)
    return functools.partial(compiled, compiled_binding, ort.RunOptions())


class CpuBoundCall(BoundCall):
    """One caller's batch-1 IO binding on a CPU session; `for_session` makes one where shapes allow."""

    def __init__(self, session, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                 input_shapes: Sequence[tuple[int, ...]]):
        import onnxruntime as ort

        self._binding = session.io_binding()
        # The arrays must live as long as the binding: ORT reads and writes their memory.
        self.inputs = {}
        for spec, shape in zip(inputs, input_shapes):
            array = np.zeros(shape, spec.dtype)
            self._binding.bind_ortvalue_input(spec.name, ort.OrtValue.ortvalue_from_numpy(array))
            self.inputs[spec.name] = array
        self._ours: dict[str, np.ndarray] = {}
        self._allocated: list[tuple[int, str]] = []  # (index among the binding's outputs, name)
        for i, spec in enumerate(outputs):
            shape = batch_one_shape(spec)
            if shape is None:
                self._binding.bind_output(spec.name, "cpu")  # ORT sizes and allocates it each call
                self._allocated.append((i, spec.name))
            else:
                array = np.zeros(shape, spec.dtype)
                self._binding.bind_ortvalue_output(spec.name, ort.OrtValue.ortvalue_from_numpy(array))
                self._ours[spec.name] = array
        self._names = [spec.name for spec in outputs]
        self._run = _direct_run(session, self._binding)

    @classmethod
    def for_session(cls, session, inputs: Sequence[TensorSpec],
                    outputs: Sequence[TensorSpec]) -> Optional["CpuBoundCall"]:
        """A bound call, or None when an input has a dynamic axis besides the batch (its size varies per call)."""
        shapes = [batch_one_shape(spec) for spec in inputs]
        if not inputs or any(shape is None for shape in shapes):
            return None
        return cls(session, inputs, outputs, shapes)

    def close(self) -> None:
        """Let go of the session and the buffers (the runner deactivates); run() then raises."""
        self._binding = self._run = None
        self.inputs, self._ours, self._allocated = {}, {}, []

    def run(self) -> dict[str, np.ndarray]:
        if self._run is None:
            raise InferenceError("onnxruntime failed: the runner was deactivated")
        try:
            for _, name in self._allocated:
                self._binding.bind_output(name, "cpu")  # not last call's array (see the module docstring)
            self._run()
            allocated = self._binding.get_outputs() if self._allocated else None
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise InferenceError(f"onnxruntime failed: {exc}") from exc
        if allocated is None:
            return self._ours
        out = dict(self._ours)
        for i, name in self._allocated:
            out[name] = allocated[i].numpy()
        return {name: out[name] for name in self._names}
