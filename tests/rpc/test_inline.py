"""Tiny models run inline on the event loop; everything else still hops to the workers."""
from __future__ import annotations

import gc
import threading
import weakref

import numpy as np
import pytest

from edgeinfer_client import Client

from edgeinfer.runtime.onnxruntime.bound_call import CpuBoundCall


def _config(trivial_onnx, classifier_onnx, tmp_path, inline_max_us):
    from edgeinfer.config import parse_config

    labels = classifier_onnx.parent / "imagenet-labels.txt"
    return parse_config({
        "server": {"workers": 2, "inline_max_us": inline_max_us},
        "cache": {"dir": str(tmp_path)},
        "models": [
            {"name": "trivial", "onnx": str(trivial_onnx), "backends": ["onnxruntime"],
             "postprocess": {"task": "raw"},
             # the CPU EP, whose batch-1 bound call these tests watch, on a GPU host too
             "onnxruntime": {"providers": ["CPUExecutionProvider"], "intra_op_threads": 1}},
            {"name": "imagenet", "onnx": str(classifier_onnx), "backends": ["onnxruntime"],
             "input": {"resize": "center-crop", "mean": [127.0] * 3, "std": [128.0] * 3},
             "postprocess": {"task": "classification", "labels": str(labels)}},
        ]}, source="test_inline")


def _spy_threads(model, monkeypatch):
    """Record the thread each ONNX Runtime call of `model` runs on: `session.run` (the general path)
    and its runner's bound calls (the short path: CpuBoundCall.run, which calls ORT's compiled
    session directly, so the session's Python method never sees it)."""
    seen = []
    session = model.runner.session
    inner = session.run

    def spy(*args, **kwargs):
        seen.append(threading.current_thread().name)
        return inner(*args, **kwargs)
    session.run = spy
    _spy_bound_runs(model, monkeypatch, seen)
    return seen


def _spy_bound_runs(model, monkeypatch, seen=None):
    """Record (in `seen`) the thread of each run of a bound call made by `model`'s current runner."""
    seen = [] if seen is None else seen
    runner = model.runner
    inner = CpuBoundCall.run

    def spy(call):
        if call in runner._bound_calls:
            seen.append(threading.current_thread().name)
        return inner(call)
    # Wrap whatever is there: each spying model's spy filters its own runner's calls.
    monkeypatch.setattr(CpuBoundCall, "run", spy)
    return seen


def _spy_calls(obj, name):
    """Count calls of obj.name (the spy still calls through)."""
    calls = []
    inner = getattr(obj, name)

    def spy(*args, **kwargs):
        calls.append(args)
        return inner(*args, **kwargs)
    setattr(obj, name, spy)
    return calls


def _requests_ok(d, model):
    return d.daemon.metrics.registry.get_sample_value("edgeinfer_requests_total", {"model": model, "code": "OK"})


def _latency_count(d, model, stage="total"):
    return d.daemon.metrics.registry.get_sample_value("edgeinfer_request_latency_seconds_count",
                                                      {"model": model, "stage": stage})


def test_tiny_model_tensors_run_on_the_loop_images_on_workers(start_daemon, trivial_onnx, classifier_onnx,
                                                              media, tmp_path, monkeypatch):
    # A threshold no model misses: which path runs must follow the input kind, not timing luck.
    d = start_daemon(_config(trivial_onnx, classifier_onnx, tmp_path, inline_max_us=10_000_000))
    trivial, imagenet = d.daemon.registry.get("trivial"), d.daemon.registry.get("imagenet")
    assert trivial.warm_infer_us is not None and trivial.warm_infer_us > 0
    on_trivial, on_imagenet = _spy_threads(trivial, monkeypatch), _spy_threads(imagenet, monkeypatch)
    x = np.arange(64, dtype=np.float32)[None]
    with Client(d.address, timeout=30) as c:
        for _ in range(3):
            r = c.infer("trivial", tensors={"x": x})
            np.testing.assert_array_equal(r.outputs["y"], x + 1)
        big = c.infer("trivial", tensors={"x": np.zeros((5, 64), np.float32)})  # batch 5: not what warm-up timed
        np.testing.assert_array_equal(big.outputs["y"], np.ones((5, 64), np.float32))
        top = c.infer("imagenet", (media / "coffee.png").read_bytes(), top_k=1)
        assert top.classes[0].label == "espresso"
        with pytest.raises(Exception) as err:  # a bad tensor on the inline path: a clean error, the loop lives
            c.infer("trivial", tensors={"x": np.zeros((1, 3), np.float32)})
        assert "INVALID_ARGUMENT" in str(err.value)
        np.testing.assert_array_equal(c.infer("trivial", tensors={"x": x}).outputs["y"], x + 1)
    assert on_trivial[:3] == [d.thread.name] * 3  # the daemon's event loop thread
    assert on_trivial[3].startswith("infer")      # the batch of 5 went to a worker
    assert on_imagenet == [on_imagenet[0]] and on_imagenet[0].startswith("infer")
    assert d.daemon.pipeline._lanes["trivial"].inline


def test_inline_off_when_the_threshold_is_zero(start_daemon, trivial_onnx, classifier_onnx, tmp_path,
                                              monkeypatch):
    d = start_daemon(_config(trivial_onnx, classifier_onnx, tmp_path, inline_max_us=0))
    seen = _spy_threads(d.daemon.registry.get("trivial"), monkeypatch)
    x = np.ones((1, 64), np.float32)
    with Client(d.address, timeout=30) as c:
        np.testing.assert_array_equal(c.infer("trivial", tensors={"x": x}).outputs["y"], x + 1)
    assert len(seen) == 1 and seen[0].startswith("infer")
    assert not d.daemon.pipeline._lanes["trivial"].inline


def test_short_path_answers_as_the_general_path_and_counts_the_same(start_daemon, trivial_onnx, classifier_onnx,
                                                                     tmp_path, monkeypatch):
    """From the first request on, fitting tensor requests skip the domain objects (rpc/fastpath.py)."""
    d = start_daemon(_config(trivial_onnx, classifier_onnx, tmp_path, inline_max_us=10_000_000))
    trivial = d.daemon.registry.get("trivial")
    general = _spy_calls(trivial, "predict")
    x = np.random.default_rng(3).standard_normal((1, 64)).astype(np.float32)
    with Client(d.address, timeout=30) as c:
        first = c.infer("trivial", tensors={"x": x}, request_id="a", top_k=3)   # the short path already
        assert len(general) == 0
        ok0, lat0 = _requests_ok(d, "trivial"), _latency_count(d, "trivial")
        session = trivial.runner.session
        plain, bound = _spy_calls(session, "run"), _spy_bound_runs(trivial, monkeypatch)
        xs = [x + i for i in range(5)]  # each request refills the bound input: no answer may repeat the last
        answers = [c.infer("trivial", tensors={"x": xs[i]}, request_id=f"b{i}") for i in range(5)]
        assert len(general) == 0, "fitting requests must not take the general path"
        # On the CPU EP the short path runs the model through its IO binding (bound_call.py).
        assert len(bound) == 5 and plain == []
        assert _requests_ok(d, "trivial") == ok0 + 5
        assert _latency_count(d, "trivial") == lat0 + 5
        for i, r in enumerate(answers):
            np.testing.assert_array_equal(r.outputs["y"], xs[i] + 1)
            assert r.outputs["y"].dtype == first.outputs["y"].dtype and r.outputs["y"].shape == (1, 64)
            assert (r.model, r.model_version, r.backend, r.precision) == \
                (first.model, first.model_version, first.backend, first.precision)
            assert r.request_id == f"b{i}"
            assert r.batch_size == 1 and r.timing_us["total"] >= r.timing_us["inference"] > 0

        # Requests that do not fit exactly go the general way and get its errors and answers.
        cases = {
            "float64": ({"x": x.astype(np.float64)}, "dtype"),
            "short row": ({"x": x[:, :3]}, "shape"),
            "unknown name": ({"z": x}, "missing input"),
            "extra tensor": ({"x": x, "z": x}, "unknown input"),
        }
        for label, (tensors, words) in cases.items():
            with pytest.raises(Exception) as err:
                c.infer("trivial", tensors=tensors)
            assert "INVALID_ARGUMENT" in str(err.value) and words in str(err.value), label
        batch = c.infer("trivial", tensors={"x": np.zeros((3, 64), np.float32)})  # batch 3: general, on a worker
        np.testing.assert_array_equal(batch.outputs["y"], np.ones((3, 64), np.float32))
        assert len(general) == len(cases) + 1
        assert d.daemon.metrics.registry.get_sample_value(
            "edgeinfer_requests_total", {"model": "trivial", "code": "INVALID_ARGUMENT"}) == len(cases)


def test_short_path_stops_with_the_model(start_daemon, trivial_onnx, classifier_onnx, tmp_path, monkeypatch):
    d = start_daemon(_config(trivial_onnx, classifier_onnx, tmp_path, inline_max_us=10_000_000))
    trivial = d.daemon.registry.get("trivial")
    x = np.ones((1, 64), np.float32)
    with Client(d.address, timeout=30) as c:
        c.infer("trivial", tensors={"x": x})
        c.infer("trivial", tensors={"x": x})  # the short path now
        session = trivial.runner.session
        runs, bound_runs = _spy_calls(session, "run"), _spy_bound_runs(trivial, monkeypatch)
        trivial.unload()  # as shutdown does
        with pytest.raises(Exception) as err:  # not the stale runner: the model says it is not ready
            c.infer("trivial", tensors={"x": x})
        assert "UNAVAILABLE" in str(err.value)
    assert runs == [] and bound_runs == []
    # Nothing keeps the stopped model's ONNX Runtime session alive: not its closed bound call,
    # not the short path the servicer forgot when the model stopped.
    alive = weakref.ref(session)
    del session
    gc.collect()
    assert alive() is None


def test_short_path_failure_is_counted_and_answered(start_daemon, trivial_onnx, classifier_onnx, tmp_path,
                                                   monkeypatch):
    d = start_daemon(_config(trivial_onnx, classifier_onnx, tmp_path, inline_max_us=10_000_000))
    runner = d.daemon.registry.get("trivial").runner
    x = np.ones((1, 64), np.float32)
    with Client(d.address, timeout=30) as c:
        c.infer("trivial", tensors={"x": x})  # on the short path
        (call,) = list(runner._bound_calls)

        def failing():  # the short path's runtime call (ORT's Run) fails
            raise RuntimeError("injected")
        with monkeypatch.context() as patch:
            patch.setattr(call, "_run", failing)
            with pytest.raises(Exception) as err:
                c.infer("trivial", tensors={"x": x})
        assert "INTERNAL" in str(err.value) and "onnxruntime failed: injected" in str(err.value)
        np.testing.assert_array_equal(c.infer("trivial", tensors={"x": x}).outputs["y"], x + 1)
    assert d.daemon.metrics.registry.get_sample_value(
        "edgeinfer_requests_total", {"model": "trivial", "code": "INTERNAL"}) == 1


def test_stream_frames_answer_in_order_across_short_path_workers_and_errors(start_daemon, trivial_onnx,
                                                                             classifier_onnx, tmp_path, monkeypatch):
    """InferStream answers frames the short path takes as they are read (no task each); the others
    still go through the general path, and every answer comes back in the frames' order."""
    import grpc

    from edgeinfer_proto.tensors import to_tensor
    from edgeinfer_proto.edgeinfer.v1 import inference_pb2 as pb
    from edgeinfer_proto.edgeinfer.v1 import inference_pb2_grpc as pb_grpc

    d = start_daemon(_config(trivial_onnx, classifier_onnx, tmp_path, inline_max_us=10_000_000))
    trivial = d.daemon.registry.get("trivial")
    with Client(d.address, timeout=30) as c:
        c.infer("trivial", tensors={"x": np.zeros((1, 64), np.float32)})  # on the short path
    threads = _spy_threads(trivial, monkeypatch)
    rng = np.random.default_rng(7)
    frames = [rng.standard_normal((1, 64)).astype(np.float32) for _ in range(6)]
    frames.insert(2, rng.standard_normal((3, 64)).astype(np.float32))  # batch 3: the general path, a worker
    frames.insert(4, np.zeros((1, 5), np.float32))                       # wrong shape: an error frame
    requests = [pb.InferRequest(model="trivial", request_id=f"f{i}",
                                tensors=pb.TensorSet(tensors=[to_tensor("x", x)])) for i, x in enumerate(frames)]
    with grpc.insecure_channel(d.address) as channel:
        answers = list(pb_grpc.InferenceStub(channel).InferStream(iter(requests), timeout=30))
    assert [a.sequence for a in answers] == list(range(len(frames)))
    assert [a.request_id for a in answers] == [f"f{i}" for i in range(len(frames))]
    for i, (a, x) in enumerate(zip(answers, frames)):
        if i == 4:
            assert a.WhichOneof("result") == "error" and a.error.code == "INVALID_ARGUMENT"
            assert "expected shape" in a.error.message
            continue
        y = np.frombuffer(a.response.outputs[0].data, np.float32).reshape(x.shape)
        np.testing.assert_array_equal(y, x + 1)
    # Six batch-1 frames on the event loop's thread; the batch of 3 on a worker.
    assert sorted(threads).count(d.thread.name) == 6
    assert [t for t in threads if t != d.thread.name] and all(t.startswith("infer") for t in threads
                                                              if t != d.thread.name)


def test_short_path_refills_one_response_and_rebuilds_it_when_the_outputs_change(start_daemon, trivial_onnx,
                                                                                   classifier_onnx, tmp_path):
    """The short path keeps one InferResponse and refills it (rpc/fastpath.py): each answer must still
    carry its own request's id and values once serialized, and outputs of another shape or a dtype
    the wire cannot carry as they are must not be squeezed into the kept message."""
    from edgeinfer_proto.tensors import from_tensor, to_tensor
    from edgeinfer_proto.edgeinfer.v1 import inference_pb2 as pb

    from edgeinfer.rpc.fastpath import InlineTensorPath

    d = start_daemon(_config(trivial_onnx, classifier_onnx, tmp_path, inline_max_us=10_000_000))
    model = d.daemon.registry.get("trivial")
    rng = np.random.default_rng(11)
    xs = [rng.standard_normal((1, 64)).astype(np.float32) for _ in range(3)]
    # With the CPU EP's bound call, and without one (the runner's own call, as on a GPU runner).
    bound_path = InlineTensorPath(model, model.runner)
    model.runner.bound_call = lambda: None
    plain_path = InlineTensorPath(model, model.runner)
    del model.runner.bound_call
    for path in (plain_path, bound_path):
        sent = []
        for i, x in enumerate(xs):
            msg = path.answer(pb.InferRequest(model="trivial", request_id=f"r{i}",
                                              tensors=pb.TensorSet(tensors=[to_tensor("x", x)])))
            sent.append((msg, msg.SerializeToString()))  # as Infer does, before the next request
        assert sent[1][0] is sent[0][0] and sent[2][0] is sent[0][0], "the response must be kept and refilled"
        for i, (_, wire) in enumerate(sent):
            answer = pb.InferResponse.FromString(wire)
            assert answer.request_id == f"r{i}" and answer.timing.batch_size == 1
            np.testing.assert_array_equal(from_tensor(answer.outputs[0]), xs[i] + 1)
    assert plain_path._call is None and bound_path._call is not None

    kept = sent[0][0]
    wider = path._response("w", {"y": np.ones((2, 64), np.float32)})
    assert wider is not kept and from_tensor(wider.outputs[0]).shape == (2, 64)
    # Big-endian floats need a conversion on the way out: a new message each time, converted right.
    big = np.arange(64, dtype=">f4")[None]
    first = path._response("b1", {"y": big})
    again = path._response("b2", {"y": big})
    assert first is not again and again.request_id == "b2"
    np.testing.assert_array_equal(from_tensor(again.outputs[0]), big.astype(np.float32))
    # A renamed output also gets a message of its own.
    renamed = path._response("n", {"z": np.ones((1, 64), np.float32)})
    assert [t.name for t in renamed.outputs] == ["z"]
