"""Images decoded on the GPU in the shared inference process: what the front-ends send it.

A model with `decode = "gpu"` takes ResizeJobs (encoded bytes and a resize plan per image), not
a tensor. With `inference = "shared"` they cross from the front-end to the inference process
through the shared buffer and are merged there with other front-ends' jobs. The runner that
decodes them (gpu/decoding_runner.py) needs a GPU; here a stand-in that decodes each job with
OpenCV checks the crossing and the merging around it.
"""
from __future__ import annotations

import os
import threading
import time

import numpy as np

from edgeinfer.model.families.preprocess import cv2
from edgeinfer.runtime.base import DescribedRunner, RunnerInfo, TensorSpec
from edgeinfer.runtime.gpu.image_job import Nv12Surface, ResizeJob, job_batch
from edgeinfer.serving.shared.coalesce import Coalescer
from edgeinfer.serving.shared.wire import SharedBuffer, bytes_needed


def _jobs(media) -> list[ResizeJob]:
    jpeg = (media / "rocket.jpg").read_bytes()
    pixels = cv2.imread(str(media / "coffee.png"))
    bgr = cv2.resize(pixels, (64, 48))
    i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)
    nv12 = np.concatenate([i420[:48], np.stack([i420[48:60].reshape(24, 32), i420[60:].reshape(24, 32)], 2)
                           .reshape(24, 64)])
    frame = Nv12Surface(64, 48, 64, 0, 0, download=lambda: nv12)
    return [ResizeJob(2, 300, 200, 224, 150, 0, 37, swap_rb=True, data=jpeg),
            ResizeJob(1, pixels.shape[1], pixels.shape[0], 224, 224, 0, 0, swap_rb=False, pixels=pixels),
            ResizeJob(1, 64, 48, 224, 168, 0, 28, swap_rb=True, frame=frame)]


def test_jobs_cross_as_their_bytes_and_plans_and_padding_stays_one_job(media):
    sent = _jobs(media)
    batch = job_batch(sent + [sent[-1]])  # padding repeats the last row
    mine = SharedBuffer(1 << 22)
    peer = SharedBuffer(1 << 22, os.dup(mine.fd))
    try:
        layout, free_at = mine.write({"image": batch, "scale": np.ones((4, 1), np.float32)})
        assert free_at <= bytes_needed({"image": batch, "scale": np.ones((4, 1), np.float32)})
        got = peer.read(layout)
        jobs = got["image"]
        assert jobs.dtype == object and jobs.shape == (4,)
        assert jobs[3] is jobs[2]  # the same job again, as the GPU runner decodes each once
        plan = ("reduce", "reduced_w", "reduced_h", "resized_w", "resized_h", "dx", "dy", "swap_rb")
        for a, b in zip(sent, jobs):
            assert [getattr(a, f) for f in plan] == [getattr(b, f) for f in plan]
            assert b.frame is None
        assert jobs[0].data == sent[0].data and jobs[0].pixels is None
        np.testing.assert_array_equal(jobs[1].pixels, sent[1].pixels)
        # A frame in GPU memory cannot leave its process: it crosses as its BGR pixels.
        np.testing.assert_array_equal(jobs[2].pixels, sent[2].frame.to_bgr())
        np.testing.assert_array_equal(got["scale"], np.ones((4, 1), np.float32))
        mine.write({"image": job_batch([sent[1]])})  # the next call reuses the buffer: the host's jobs own their bytes
        assert jobs[0].data == sent[0].data
    finally:
        peer.close()
        mine.close()


class _DecodesJobs(DescribedRunner):
    """Stands in for the GPU decoding runner: decodes each job with OpenCV; output = its mean pixel.
    Records the rows of each call."""

    def __init__(self):
        super().__init__()
        self._inputs = [TensorSpec("image", np.dtype(object), (-1,))]
        self._outputs = [TensorSpec("mean", np.dtype(np.float32), (-1, 1))]
        self._info = RunnerInfo(backend="test", precision="fp32", max_batch=8, max_concurrency=1)
        self.calls: list[int] = []
        self.entered, self.gate = threading.Event(), threading.Event()
        self.active = True

    def infer_impl(self, feeds):
        self.entered.set()
        self.gate.wait(10)
        jobs = feeds["image"]
        self.calls.append(len(jobs))
        return {"mean": np.array([[_mean(j)] for j in jobs], np.float32)}


def _mean(job: ResizeJob) -> float:
    if job.data:
        return float(cv2.imdecode(np.frombuffer(job.data, np.uint8), cv2.IMREAD_COLOR).mean())
    return float(job.pixels.mean())


def test_the_inference_process_merges_two_front_ends_jobs_and_answers_each_its_own(media):
    sent = _jobs(media)
    runner = _DecodesJobs()
    coalescer = Coalescer("m", runner, 8, [1, 2, 4, 8])
    results = {}
    buffers = []

    def front_end(key, jobs):
        mine = SharedBuffer(1 << 22)
        peer = SharedBuffer(1 << 22, os.dup(mine.fd))
        buffers.extend([mine, peer])
        layout, _ = mine.write({"image": job_batch(jobs)})
        results[key] = coalescer.run(peer.read(layout), len(jobs))

    threads = [threading.Thread(target=front_end, args=("held", sent[1:2]))]
    try:
        threads[0].start()  # takes the only slot, held at the gate
        assert runner.entered.wait(10)
        for key, jobs in (("a", sent[:1]), ("b", sent[1:])):
            threads.append(threading.Thread(target=front_end, args=(key, jobs)))
            threads[-1].start()
        deadline = time.monotonic() + 10
        while len(coalescer._queue) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        runner.gate.set()
        for t in threads:
            t.join(10)
        # One call for the held front-end, then one for both others' jobs, merged (padded to a bucket).
        assert runner.calls[0] == 1 and runner.calls[1] in (3, 4) and len(runner.calls) == 2, runner.calls
        want = [_mean(j) if j.frame is None else float(j.frame.to_bgr().mean()) for j in sent]
        assert results["a"].outputs["mean"][:, 0].tolist() == [np.float32(want[0])]
        assert results["b"].outputs["mean"][:, 0].tolist() == [np.float32(w) for w in want[1:]]
    finally:
        runner.gate.set()
        coalescer.close(5)
        for b in buffers:
            b.close()
