"""Dynamic batching on a real daemon with the real models.

Timing never decides a verdict here: where a test needs requests to pile up it
holds the model's runner at a gate (a wrapper around the real runner's infer)
and waits for the queue to reach a known state, so batch composition is exact
even on a loaded 2-core machine. The one test that relies on natural
concurrency uses a 150 ms fill delay and asserts only that some batch had
more than one request.
"""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client import generate_latest

from edgeinfer_client import AsyncClient, Client, ClientError, StreamError

ESPRESSO = 967


def _model(name, onnx, task, *, max_batch=1, delay_us=2000, max_queue=256, instances=2, preferred=(),
           **extra):
    m = {"name": name, "onnx": str(onnx), "backends": ["onnxruntime"], "warmup_runs": 1,
         "onnxruntime": {"instances": instances},
         "batching": {"max_batch": max_batch, "max_queue_delay_us": delay_us, "max_queue": max_queue,
                      "preferred_batch_sizes": list(preferred)},
         "postprocess": {"task": task}}
    for k, v in extra.items():
        m.setdefault(k, {}).update(v) if isinstance(v, dict) else m.__setitem__(k, v)
    return m


def _imagenet(name, onnx, labels, **kw):
    return _model(name, onnx, "classification", input={"resize": "center-crop", "size": [224, 224],
                                                       "mean": [127.0] * 3, "std": [128.0] * 3},
                  postprocess={"labels": str(labels)}, **kw)


def _faces(name, onnx, **kw):
    return _model(name, onnx, "centerface", input={"resize": "letterbox", "size": [640, 480], "pad_value": 0},
                  postprocess={"score_threshold": 0.5, "nms_iou_threshold": 0.3}, **kw)


def _config(models, tmp_path, workers=4):
    from edgeinfer.config import parse_config

    return parse_config({"server": {"workers": workers}, "cache": {"dir": str(tmp_path)}, "models": models},
                        source="test_batching")


def samples(d, name):
    """{(metric sample name, frozenset(labels)): value} for one model from the daemon's registry."""
    text = generate_latest(d.daemon.metrics.registry).decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.labels.get("model") == name:
                labels = {k: v for k, v in s.labels.items() if k != "model"}
                out[(s.name, frozenset(labels.items()))] = s.value
    return out


def metric(d, name, sample, **labels):
    return samples(d, name).get((sample, frozenset(labels.items())), 0.0)


def wait_for(predicate, timeout=20.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


class Gate:
    """Wraps a loaded runner's infer: records each call's batch rows, can hold or fail calls."""

    def __init__(self, runner):
        self.runner = runner
        self.inner = runner.infer
        self.calls: list[int] = []
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.opened.set()
        self.fail_with: Exception | None = None
        runner.infer = self  # instance attribute: the batcher calls runner.infer(feeds)

    def close(self):
        self.opened.clear()
        self.entered.clear()

    def open(self):
        self.opened.set()

    def __call__(self, feeds):
        self.calls.append(int(next(iter(feeds.values())).shape[0]))
        self.entered.set()
        assert self.opened.wait(30), "test gate never opened"
        if self.fail_with is not None:
            raise self.fail_with
        return self.inner(feeds)

    def restore(self):
        self.opened.set()
        del self.runner.infer


# --------------------------------------------------------------------------------
# Daemon 1: natural batching and equality with the unbatched path
# --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def batched(start_daemon, centerface_onnx, classifier_onnx, tmp_path_factory):
    labels = classifier_onnx.parent / "imagenet-labels.txt"
    cfg = _config([
        _imagenet("imagenet", classifier_onnx, labels),
        _imagenet("imagenet_b8", classifier_onnx, labels, max_batch=8, delay_us=150_000),
        _faces("faces", centerface_onnx),
        # One slot: while the test gate holds it, every other request queues.
        _faces("faces_b4", centerface_onnx, max_batch=4, delay_us=150_000, instances=1),
    ], tmp_path_factory.mktemp("cache"))
    return start_daemon(cfg)


def test_concurrent_requests_form_batches_with_unbatched_answers(batched, media):
    coffee = (media / "coffee.png").read_bytes()
    with Client(batched.address, timeout=60) as c:
        reference = c.infer("imagenet", coffee, top_k=5)

    async def main():
        async with AsyncClient(batched.address, timeout=60) as c:
            return await asyncio.gather(*[c.infer("imagenet_b8", coffee, top_k=5) for _ in range(16)])

    results = asyncio.run(main())
    assert len(results) == 16
    for r in results:
        assert [x.index for x in r.classes] == [x.index for x in reference.classes]
        np.testing.assert_allclose([x.score for x in r.classes], [x.score for x in reference.classes], atol=1e-4)
        assert r.classes[0].index == ESPRESSO
        t = r.timing_us
        assert t["inference"] > 0 and t["preprocess"] > 0
        assert t["total"] >= t["inference"] + t["postprocess"]
        assert 1 <= r.batch_size <= 8
    count = metric(batched, "imagenet_b8", "edgeinfer_batch_size_count")
    total = metric(batched, "imagenet_b8", "edgeinfer_batch_size_sum")
    assert total == 16, "every request ran in exactly one batch"
    assert count < 16, f"16 concurrent requests ran in {count:.0f} batches: no batch had more than one"
    assert max(r.batch_size for r in results) > 1  # the response says which batch it ran in
    assert metric(batched, "imagenet_b8", "edgeinfer_batch_size_bucket", le="8.0") == count  # never over max_batch
    assert metric(batched, "imagenet", "edgeinfer_batch_size_count") == 0  # the unbatched lane never batches
    assert batched.daemon.pipeline.max_batch(batched.daemon.registry.get("imagenet_b8")) == 8


def test_batched_faces_match_unbatched_per_image(batched, media):
    """Different photos in one batch: each answer uses its own letterbox transform."""
    names = ["astronaut.png", "coffee.png", "chelsea.png", "astronaut.png", "rocket.jpg", "camera.png"]
    with Client(batched.address, timeout=60) as c:
        reference = {n: c.infer("faces", media / n).detections for n in set(names)}
    gate = Gate(batched.daemon.registry.get("faces_b4").runner)
    try:
        gate.close()
        with ThreadPoolExecutor(len(names)) as pool, Client(batched.address, timeout=60) as c:
            futures = [pool.submit(c.infer, "faces_b4", media / n) for n in names]
            wait_for(lambda: gate.entered.is_set(), what="the first batch")
            wait_for(lambda: batched.daemon.pipeline.batcher("faces_b4").queued + sum(gate.calls) == len(names),
                     what="all requests queued")
            gate.open()
            results = [f.result() for f in futures]
    finally:
        gate.restore()
    assert max(gate.calls) > 1, gate.calls
    assert sum(gate.calls) == len(names)
    for n, r in zip(names, results):
        ref = reference[n]
        assert len(r.detections) == len(ref), n
        for a, b in zip(r.detections, ref):
            np.testing.assert_allclose(a.box, b.box, atol=0.5, err_msg=n)
            assert abs(a.score - b.score) < 1e-3
            np.testing.assert_allclose(a.landmarks, b.landmarks, atol=0.5)
    assert r.image_size == tuple(cv2.imread(str(media / names[-1])).shape[1::-1])


@pytest.mark.slow
def test_stream_frames_are_batched_and_ordered(batched, media):
    cap = cv2.VideoCapture(str(media / "carphone_pristine.mp4"))
    frames = []
    while len(frames) < 24:
        ok, frame = cap.read()
        assert ok
        frames.append(frame)
    before = metric(batched, "faces_b4", "edgeinfer_batch_size_count")
    with Client(batched.address, timeout=60) as c:
        results = list(c.stream("faces_b4", frames, pixel_format="bgr"))
        reference = [c.infer("faces", f, pixel_format="bgr") for f in frames[:2]]
    assert [r.request_id for r in results] == [str(i) for i in range(len(frames))]
    assert not [r for r in results if isinstance(r, StreamError)]
    batches = metric(batched, "faces_b4", "edgeinfer_batch_size_count") - before
    assert batches < len(frames), "a window of 16 frames in flight must share batches"
    for r, ref in zip(results, reference):
        assert len(r.detections) == len(ref.detections)
        for a, b in zip(r.detections, ref.detections):
            np.testing.assert_allclose(a.box, b.box, atol=0.5)


# --------------------------------------------------------------------------------
# Daemon 2: one slot per model, held at a gate: exact batch composition
# --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gated(start_daemon, centerface_onnx, classifier_onnx, tmp_path_factory):
    labels = classifier_onnx.parent / "imagenet-labels.txt"
    cfg = _config([
        # CenterFace as a raw model: tensors of any H, W in, tensors out.
        _model("raw_b8", centerface_onnx, "raw", max_batch=8, delay_us=20_000, instances=1,
               input={"size": [32, 32]}),
        _imagenet("small_queue", classifier_onnx, labels, max_batch=4, delay_us=0, max_queue=4, instances=1),
    ], tmp_path_factory.mktemp("cache"))
    d = start_daemon(cfg)
    return d


@pytest.fixture
def raw_gate(gated):
    gate = Gate(gated.daemon.registry.get("raw_b8").runner)
    yield gate
    gate.restore()


def _hold_first(gate, pool, c, model, **kw):
    """Send one request and wait until it is inside the (closed) gate: the only slot is busy."""
    gate.close()
    fut = pool.submit(c.infer, model, **kw)
    wait_for(lambda: gate.entered.is_set(), what="the first request to reach the runner")
    return fut


def test_only_same_shapes_share_a_batch(gated, raw_gate):
    rng = np.random.default_rng(0)
    first = {"input.1": rng.uniform(0, 255, (1, 3, 32, 32)).astype(np.float32)}
    small = [{"input.1": rng.uniform(0, 255, (1, 3, 32, 32)).astype(np.float32)} for _ in range(3)]
    pair = {"input.1": rng.uniform(0, 255, (2, 3, 32, 32)).astype(np.float32)}  # a client-side batch of 2
    large = [{"input.1": rng.uniform(0, 255, (1, 3, 64, 64)).astype(np.float32)} for _ in range(3)]
    pipe = gated.daemon.pipeline
    with ThreadPoolExecutor(8) as pool, Client(gated.address, timeout=60) as c:
        held = _hold_first(raw_gate, pool, c, "raw_b8", tensors=first)
        later = small[:1] + large[:1] + small[1:] + [pair] + large[1:]
        futures = []
        for feeds in later:  # one by one: arrival order is the order of the list
            futures.append(pool.submit(c.infer, "raw_b8", tensors=feeds))
            wait_for(lambda: pipe.batcher("raw_b8").queued == len(futures), what="request queued")
        raw_gate.open()
        answers = [held.result()] + [f.result() for f in futures]
    # First the held request, then the 32x32 group (1+1+1+2 rows), then the 64x64 group.
    assert raw_gate.calls == [1, 5, 3]
    expected = [raw_gate.inner(feeds) for feeds in [first] + later]
    for got, want in zip(answers, expected):
        assert set(got.outputs) == set(want)
        for name in want:
            assert got.outputs[name].shape == want[name].shape
            np.testing.assert_allclose(got.outputs[name], want[name], rtol=1e-4, atol=1e-4)
    assert metric(gated, "raw_b8", "edgeinfer_batch_size_sum") >= 9


def test_expired_requests_are_dropped_before_compute_and_counted(gated, raw_gate):
    feeds = {"input.1": np.zeros((1, 3, 32, 32), np.float32)}
    before = metric(gated, "raw_b8", "edgeinfer_deadline_expired_total")
    expired_before = metric(gated, "raw_b8", "edgeinfer_requests_total", code="DEADLINE_EXCEEDED")
    cancelled_before = metric(gated, "raw_b8", "edgeinfer_requests_total", code="CANCELLED")
    with ThreadPoolExecutor(4) as pool, Client(gated.address, timeout=60) as c:
        held = _hold_first(raw_gate, pool, c, "raw_b8", tensors=feeds)
        late = [pool.submit(c.infer, "raw_b8", tensors=feeds, timeout=1.0) for _ in range(2)]
        # Both must be waiting in the batch queue (not still in a worker) when
        # their deadline passes: that is the drop under test.
        wait_for(lambda: gated.daemon.pipeline.batcher("raw_b8").queued == 2, timeout=0.9,
                 what="both late requests queued before their deadline")
        for f in late:
            with pytest.raises(ClientError) as info:
                f.result()
            assert info.value.code == "DEADLINE_EXCEEDED"
        # The server starts its copy of the deadline on receipt, a little after
        # the client: give it a margin to pass too before the slot frees up.
        time.sleep(0.2)
        raw_gate.open()
        assert held.result().outputs
        wait_for(lambda: metric(gated, "raw_b8", "edgeinfer_deadline_expired_total") == before + 2,
                 what="two deadline drops counted")
        assert raw_gate.calls == [1], "expired requests must not reach the runner"
        # Per-request status: the client's deadline can fire, and its cancel arrive,
        # before the server's copy of the deadline (started on receipt) runs out;
        # the server then sees a cancellation. Either way both are counted, once.
        gave_up = lambda: sum(metric(gated, "raw_b8", "edgeinfer_requests_total", code=code)  # noqa: E731
                              for code in ("DEADLINE_EXCEEDED", "CANCELLED"))
        wait_for(lambda: gave_up() == expired_before + cancelled_before + 2,
                 what="two expired requests counted as DEADLINE_EXCEEDED or CANCELLED")
        assert c.infer("raw_b8", tensors=feeds).outputs  # and the model keeps serving
    assert gated.daemon.pipeline.queue_depths()["raw_b8"] == 0


def test_full_queue_answers_resource_exhausted_and_keeps_serving(gated, media):
    gate = Gate(gated.daemon.registry.get("small_queue").runner)
    coffee = (media / "coffee.png").read_bytes()
    try:
        with ThreadPoolExecutor(12) as pool, Client(gated.address, timeout=60) as c:
            held = _hold_first(gate, pool, c, "small_queue", image=coffee)
            futures = [pool.submit(c.infer, "small_queue", coffee) for _ in range(10)]
            # max_queue 4: four wait, six are refused at once while the gate is still closed.
            wait_for(lambda: metric(gated, "small_queue", "edgeinfer_queue_full_total") == 6, what="6 refusals")
            assert gated.daemon.pipeline.queue_depths()["small_queue"] == 4
            gate.open()
            outcomes = []
            for f in futures:
                try:
                    outcomes.append(f.result().classes[0].index)
                except ClientError as exc:
                    outcomes.append(exc.code)
                    assert "max_queue" in exc.message
            assert held.result().classes[0].index == ESPRESSO
            assert outcomes.count("RESOURCE_EXHAUSTED") == 6 and outcomes.count(ESPRESSO) == 4, outcomes
            assert c.infer("small_queue", coffee).classes[0].index == ESPRESSO
    finally:
        gate.restore()
    assert gate.calls[0] == 1 and sum(gate.calls) == 6
    assert metric(gated, "small_queue", "edgeinfer_requests_total", code="RESOURCE_EXHAUSTED") == 6


def test_a_failing_batch_answers_every_waiting_request(gated, raw_gate):
    from edgeinfer.errors import InferenceError

    feeds = {"input.1": np.zeros((1, 3, 32, 32), np.float32)}
    with ThreadPoolExecutor(6) as pool, Client(gated.address, timeout=60) as c:
        held = _hold_first(raw_gate, pool, c, "raw_b8", tensors=feeds)
        futures = [pool.submit(c.infer, "raw_b8", tensors=feeds) for _ in range(4)]
        wait_for(lambda: gated.daemon.pipeline.batcher("raw_b8").queued == 4, what="4 queued")
        raw_gate.fail_with = InferenceError("simulated runtime failure")
        raw_gate.open()
        for f in [held] + futures:
            with pytest.raises(ClientError) as info:
                f.result()
            assert info.value.code == "INTERNAL" and "simulated runtime failure" in info.value.message
        raw_gate.fail_with = None
        assert c.infer("raw_b8", tensors=feeds).outputs
    assert raw_gate.calls == [1, 4, 1]


def test_invalid_request_fails_alone_not_its_batch(gated, raw_gate):
    good = {"input.1": np.zeros((1, 3, 32, 32), np.float32)}
    bad = {"input.1": np.zeros((1, 3, 32, 32), np.float64)}
    with ThreadPoolExecutor(4) as pool, Client(gated.address, timeout=60) as c:
        held = _hold_first(raw_gate, pool, c, "raw_b8", tensors=good)
        f_bad = pool.submit(c.infer, "raw_b8", tensors=bad)
        f_good = pool.submit(c.infer, "raw_b8", tensors=good)
        with pytest.raises(ClientError, match="expected dtype float32, got float64"):
            f_bad.result()
        raw_gate.open()
        assert held.result().outputs and f_good.result().outputs


# --------------------------------------------------------------------------------
# Shutdown drains
# --------------------------------------------------------------------------------

def test_shutdown_runs_what_is_queued(start_daemon, classifier_onnx, media, tmp_path):
    labels = classifier_onnx.parent / "imagenet-labels.txt"
    d = start_daemon(_config([_imagenet("drain", classifier_onnx, labels, max_batch=4, delay_us=0, instances=1)],
                             tmp_path))
    gate = Gate(d.daemon.registry.get("drain").runner)
    coffee = (media / "coffee.png").read_bytes()
    with ThreadPoolExecutor(6) as pool, Client(d.address, timeout=60) as c:
        held = _hold_first(gate, pool, c, "drain", image=coffee)
        futures = [pool.submit(c.infer, "drain", coffee) for _ in range(4)]
        wait_for(lambda: d.daemon.pipeline.batcher("drain").queued == 4, what="4 queued")
        stopper = threading.Thread(target=d.stop)
        stopper.start()
        time.sleep(0.3)  # the daemon is draining (health NOT_SERVING, no new calls)
        gate.open()
        assert all(f.result().classes[0].index == ESPRESSO for f in [held] + futures)
        stopper.join(30)
    assert not d.thread.is_alive()
    assert gate.calls == [1, 4]


# --------------------------------------------------------------------------------
# Batcher edge cases without a server (fast, fake model)
# --------------------------------------------------------------------------------

class _FakeRunner:
    def __init__(self, hang: threading.Event | None = None):
        from edgeinfer.runtime.base import RunnerInfo, TensorSpec

        self.hang = hang
        self.calls = []
        self.inputs = [TensorSpec("x", np.dtype(np.float32), (-1, 2))]
        self.outputs = [TensorSpec("y", np.dtype(np.float32), (-1, 2))]
        self.info = RunnerInfo("fake", "fp32", max_batch=None, max_concurrency=1)

    def infer(self, feeds):
        self.calls.append(feeds["x"].shape[0])
        if self.hang is not None:
            self.hang.wait(10)
        return {"y": feeds["x"] * 2}

    def rows_in_last_call(self):
        return None


class _FakeModel:
    name = "fake"

    def __init__(self, runner):
        from edgeinfer.model.types import ModelState

        self.runner, self.state, self.state_reason = runner, ModelState.READY, "ready"

    def finish(self, outputs, prepared, options):
        from edgeinfer.model.families.postprocess import Result

        return Result(outputs=outputs)

    def finish_batch(self, outputs, items):
        from edgeinfer.model.served import ServedModel

        return ServedModel.finish_batch(self, outputs, items)  # the real splitting, with this finish()


def _pending(value, answers, rows=1, now=None):
    from edgeinfer.serving.batching import Pending
    from edgeinfer.model.types import Prepared
    from edgeinfer.model.families.postprocess import Options
    from edgeinfer.model.families.preprocess import IDENTITY

    now = time.perf_counter() if now is None else now
    feeds = {"x": np.full((rows, 2), value, np.float32)}
    return Pending(Prepared(feeds, IDENTITY, (0, 0), 0, rows), Options(), now, now, now, None,
                   lambda pred, exc: answers.append((value, pred, exc)))


def test_preferred_size_cut_when_the_delay_expires():
    from edgeinfer.serving.batching import Batcher, QueueGate
    from edgeinfer.config import BatchingConfig

    hang = threading.Event()
    runner = _FakeRunner(hang)
    gate, answers = QueueGate(100), []
    b = Batcher(_FakeModel(runner), runner, 8,
                BatchingConfig(max_batch=8, max_queue_delay_us=50_000, preferred_batch_sizes=[2, 4]), gate)
    for v in range(7):
        assert gate.admit()
    b.put(_pending(0, answers))
    wait_for(lambda: runner.calls == [1], what="first batch")  # delay expired with 1 < 2: runs as it is
    for v in range(1, 7):  # arrived long ago: their fill delay has expired
        b.put(_pending(v, answers, now=time.perf_counter() - 1.0))
    hang.set()
    b.close(10)
    # After the held call: 6 waiting, delay long expired -> largest preferred size (4), then 2.
    assert runner.calls == [1, 4, 2]
    assert sorted(v for v, pred, exc in answers if exc is None) == list(range(7))
    for v, pred, _ in answers:
        np.testing.assert_array_equal(pred.result.outputs["y"], np.full((1, 2), 2 * v, np.float32))
    assert gate.depth == 0


def test_close_answers_requests_a_hung_runner_never_ran():
    from edgeinfer.serving.batching import Batcher, QueueGate
    from edgeinfer.config import BatchingConfig

    hang = threading.Event()
    runner = _FakeRunner(hang)
    gate, answers = QueueGate(100), []
    b = Batcher(_FakeModel(runner), runner, 4, BatchingConfig(max_batch=4, max_queue_delay_us=0), gate)
    b.put(_pending(0, answers))
    wait_for(lambda: runner.calls == [1], what="the runner to hang")
    for v in (1, 2):
        gate.admit()
        b.put(_pending(v, answers))
    b.close(timeout=0.2)
    errors = [(v, str(exc)) for v, _, exc in answers if exc is not None]
    assert [v for v, _ in errors] == [1, 2] and all("shut down before the request ran" in m for _, m in errors)
    b.put(_pending(3, answers))  # after close: answered at once, never queued
    assert "shutting down" in str(answers[-1][2])
    hang.set()
    assert gate.depth == 0


def test_buckets_pad_to_few_sizes_and_drop_the_padding():
    """pad_to_buckets: the runner sees only bucket sizes; every request still gets its own rows."""
    from edgeinfer.runtime.buckets import batch_buckets
    from edgeinfer.serving.batching import Batcher, QueueGate
    from edgeinfer.config import BatchingConfig

    cfg = BatchingConfig(max_batch=12, max_queue_delay_us=0, preferred_batch_sizes=[6], pad_to_buckets="on")
    hang = threading.Event()
    runner = _FakeRunner(hang)
    assert batch_buckets(cfg, runner, 12) == [1, 2, 4, 6, 8, 12]
    assert batch_buckets(BatchingConfig(max_batch=12), runner, 12) == []  # auto: not ONNX Runtime on a GPU
    gate, answers = QueueGate(100), []
    b = Batcher(_FakeModel(runner), runner, 12, cfg, gate)
    b.put(_pending(0, answers))
    wait_for(lambda: runner.calls == [1], what="the first call to hold the only slot")
    for v in range(1, 6):  # 5 single rows and one request of 2 rows wait: 7 rows -> bucket 8
        gate.admit()
        b.put(_pending(v, answers))
    gate.admit()
    b.put(_pending(9, answers, rows=2))
    hang.set()
    b.close(10)
    assert runner.calls == [1, 8]
    got = {v: pred.result.outputs["y"] for v, pred, exc in answers if exc is None}
    assert sorted(got) == [0, 1, 2, 3, 4, 5, 9]
    for v, y in got.items():
        rows = 2 if v == 9 else 1
        np.testing.assert_array_equal(y, np.full((rows, 2), 2 * v, np.float32))


def test_buckets_from_config_replace_the_powers_of_two():
    from edgeinfer.runtime.buckets import batch_buckets
    from edgeinfer.config import BatchingConfig

    runner = _FakeRunner(threading.Event())
    assert batch_buckets(BatchingConfig(max_batch=32, pad_to_buckets="on", buckets=[8]), runner, 32) == [8, 32]
    assert batch_buckets(BatchingConfig(max_batch=32, pad_to_buckets="on", buckets=[32]), runner, 32) == [32]
    # The engine's max batch (here 16) caps the configured sizes, and stays a bucket itself.
    assert batch_buckets(BatchingConfig(max_batch=32, pad_to_buckets="on", buckets=[4, 32]), runner, 16) == [4, 16]


def test_session_per_batch_size_each_session_sees_one_shape(start_daemon, classifier_onnx, media, tmp_path):
    """session_per_batch_size: batch sizes 2 and 4 run on sessions of their own, each only ever
    at its size; answers equal the unbatched model's on real photos."""
    labels = classifier_onnx.parent / "imagenet-labels.txt"
    d = start_daemon(_config([
        _imagenet("plain", classifier_onnx, labels),
        _imagenet("pinned", classifier_onnx, labels, max_batch=4, delay_us=150_000, instances=1,
                  batching={"pad_to_buckets": "on"}, onnxruntime={"session_per_batch_size": "on"}),
    ], tmp_path))
    runner = d.daemon.registry.get("pinned").runner
    assert runner.info.details["sessions_per_batch_size"] == "2,4"
    sessions = {"main": runner.session, **{b: s for b, s in runner._pinned.items()}}
    assert len({id(s) for s in sessions.values()}) == 3
    seen: dict = {k: [] for k in sessions}
    for key, sess in sessions.items():
        inner = sess.run

        def spy(names, feeds, *a, _key=key, _inner=inner, **kw):
            seen[_key].append(int(next(iter(feeds.values())).shape[0]))
            return _inner(names, feeds, *a, **kw)
        sess.run = spy
    photos = [(media / f).read_bytes() for f in ("coffee.png", "chelsea.png", "astronaut.png")]
    with Client(d.address, timeout=60) as c:
        reference = [c.infer("plain", p, top_k=3) for p in photos]
        with ThreadPoolExecutor(7) as pool:
            futs = [pool.submit(c.infer, "pinned", photos[i % 3], top_k=3) for i in range(7)]
            results = [f.result() for f in futs]
    for i, r in enumerate(results):
        ref = reference[i % 3]
        assert [x.index for x in r.classes] == [x.index for x in ref.classes]
        np.testing.assert_allclose([x.score for x in r.classes], [x.score for x in ref.classes], atol=1e-4)
    assert set(seen["main"]) <= {1}, seen
    assert set(seen[2]) <= {2} and set(seen[4]) <= {4}, seen
    assert seen[2] or seen[4], f"7 concurrent requests never formed a batch: {seen}"
