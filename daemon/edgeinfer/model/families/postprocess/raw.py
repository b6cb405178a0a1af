"""Raw models: the output tensors are the answer."""
from __future__ import annotations

from edgeinfer.model.families.postprocess.base import Options, Postprocessor, Result


class RawOutputs(Postprocessor):
    def decode(self, outputs, transform, options: Options) -> Result:
        return Result(outputs=dict(outputs))
