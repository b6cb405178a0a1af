"""Runs an ONNX Runtime session. ORT sessions allow concurrent Run() calls."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ...errors import InferenceError
from ..base import Runner, RunnerInfo, TensorSpec

# ONNX Runtime type strings -> numpy dtypes.
_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


def _spec(node) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape)
    return TensorSpec(node.name, np.dtype(_ORT_TYPES.get(node.type, np.float32)), shape)


class OnnxRuntimeRunner(Runner):
    def __init__(self, session, precision: str = "fp32", max_concurrency: int = 2):
        super().__init__()
        self.session = session
        self._inputs = [_spec(i) for i in session.get_inputs()]
        self._outputs = [_spec(o) for o in session.get_outputs()]
        self._output_names = [o.name for o in self._outputs]
        provider = session.get_providers()[0]
        device = "cuda:0" if provider == "CUDAExecutionProvider" else "cpu"
        batch_dims = {s.shape[0] for s in self._inputs if s.shape}
        fixed = next(iter(batch_dims)) if len(batch_dims) == 1 and -1 not in batch_dims else None
        self._info = RunnerInfo(backend="onnxruntime", precision=precision, device=device,
                                max_batch=fixed, max_concurrency=max_concurrency,
                                details={"provider": provider})

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs

    @property
    def info(self) -> RunnerInfo:
        return self._info

    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            results = self.session.run(self._output_names, dict(feeds))
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise InferenceError(f"onnxruntime failed: {exc}") from exc
        return dict(zip(self._output_names, results))

    def deactivate_impl(self) -> None:
        self.session = None
