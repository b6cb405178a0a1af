"""Where a request's work runs: off the event loop, on the worker pool.

Unbatched models take one hop to a worker thread that does decode,
preprocess, inference and postprocess in one go (fewest thread switches).
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from ..errors import DeadlineExpired
from ..pipeline.model import ModelInput, Prediction, ServedModel
from ..pipeline.postprocess import Options


class InferencePipeline:
    def __init__(self, workers: int):
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="infer")

    async def run(self, model: ServedModel, item: ModelInput, options: Options,
                  deadline_s: Optional[float] = None) -> Prediction:
        loop = asyncio.get_running_loop()
        submitted = time.perf_counter()
        expires = submitted + deadline_s if deadline_s is not None else None

        def work() -> Prediction:
            started = time.perf_counter()
            if expires is not None and started > expires:
                raise DeadlineExpired("the request's deadline passed while it waited for a worker")
            pred = model.predict(item, options)
            pred.timing.queue_us = int((started - submitted) * 1e6)
            pred.timing.total_us += pred.timing.queue_us
            return pred

        return await loop.run_in_executor(self.executor, work)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
