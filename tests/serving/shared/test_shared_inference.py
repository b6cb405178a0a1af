"""[server] inference = "shared": the inference host, its links and the front-end's RemoteRunner.

Real models, real ONNX Runtime, real socketpairs and memfd buffers, real gRPC.
The host runs in this process here (its own threads), so a test can hold its
runner at a gate and read its metrics; tests/process/test_supervisor.py runs it
as a real separate process under the supervisor.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edgeinfer_client import Client, ClientError

ESPRESSO = 967


def _config(tmp_path, classifier_onnx, *, instances=2, max_batch=8, extra_models=(), pad_to_buckets="auto"):
    from edgeinfer.config import parse_config

    labels = classifier_onnx.parent / "imagenet-labels.txt"
    return parse_config({
        "server": {"workers": 4, "inference": "shared", "listen": "127.0.0.1:0"},
        "metrics": {"enabled": False},
        "cache": {"dir": str(tmp_path)},
        "models": [{"name": "imagenet", "onnx": str(classifier_onnx), "backends": ["onnxruntime"],
                    "warmup_runs": 1, "onnxruntime": {"instances": instances},
                    "input": {"resize": "center-crop", "size": [224, 224], "mean": [127.0] * 3, "std": [128.0] * 3},
                    "batching": {"max_batch": max_batch, "max_queue_delay_us": 2000,
                                 "pad_to_buckets": pad_to_buckets},
                    "postprocess": {"task": "classification", "labels": str(labels)}}, *extra_models],
    }, source="test_shared_inference")


class HostInProcess:
    """An InferenceHost on this process's threads; `remote()` links one more front-end to it."""

    def __init__(self, config):
        from edgeinfer.observe.metrics import Metrics
        from edgeinfer.process.host import InferenceHost

        self.metrics = Metrics(process=False)
        self.host = InferenceHost(config, self.metrics)
        self.host.start([])
        self.remotes = []
        self.host.registry.wait_loaded(120)

    def remote(self, links=1):
        """A front-end's RemoteModels on `links` real socketpairs of its own."""
        from edgeinfer.serving.shared.remote import RemoteModels

        ends = []
        for _ in range(links):
            here, there = mp.get_context("spawn").Pipe(duplex=True)
            self.host.add_link(here)
            ends.append(there)
        r = RemoteModels(ends)
        self.remotes.append(r)
        return r

    def batch_sizes(self, model="imagenet"):
        """{rows: count} of the host's runner calls, from its metrics exposition."""
        text = generate_latest(self.metrics.registry).decode()
        sizes, last = {}, 0.0
        for fam in text_string_to_metric_families(text):
            if fam.name != "edgeinfer_batch_size":
                continue
            for s in fam.samples:
                if s.name.endswith("_bucket") and s.labels.get("model") == model and s.labels["le"] != "+Inf":
                    le = float(s.labels["le"])
                    if s.value > last:
                        sizes[le] = s.value - last
                    last = s.value
        return sizes

    def stage_seconds(self, model="imagenet"):
        """{stage: (sum of seconds, count)} of the host's latency histogram."""
        text = generate_latest(self.metrics.registry).decode()
        out = {}
        for fam in text_string_to_metric_families(text):
            if fam.name != "edgeinfer_request_latency_seconds":
                continue
            for s in fam.samples:
                if s.labels.get("model") != model:
                    continue
                total, count = out.get(s.labels["stage"], (0.0, 0.0))
                if s.name.endswith("_sum"):
                    out[s.labels["stage"]] = (s.value, count)
                elif s.name.endswith("_count"):
                    out[s.labels["stage"]] = (total, s.value)
        return out

    def close(self):
        for r in self.remotes:
            r.close()
        self.host.wait_links(10)
        self.host.close(10)


@pytest.fixture(scope="module")
def host(classifier_onnx, tmp_path_factory):
    h = HostInProcess(_config(tmp_path_factory.mktemp("cache"), classifier_onnx))
    yield h
    h.close()


@pytest.fixture(scope="module")
def front_end(host, start_daemon, classifier_onnx, tmp_path_factory):
    cfg = _config(tmp_path_factory.mktemp("cache"), classifier_onnx)
    return start_daemon(cfg, remote=host.remote())


@pytest.fixture(scope="module")
def local(start_daemon, classifier_onnx, tmp_path_factory):
    """The same model served the standalone way: the reference answers."""
    cfg = _config(tmp_path_factory.mktemp("cache"), classifier_onnx)
    cfg.server.inference = "per-process"
    return start_daemon(cfg)


# -- wire -----------------------------------------------------------------------------------

def test_shared_buffer_is_one_memory_for_both_ends():
    from edgeinfer.serving.shared.wire import ALIGN, SharedBuffer

    mine = SharedBuffer(1 << 16)
    peer = SharedBuffer(1 << 16, os.dup(mine.fd))  # what the host does with the fd it receives
    try:
        feeds = {"a": np.arange(10, dtype=np.float32).reshape(2, 5), "b": np.array([[7]], np.int64)}
        layout, free_at = mine.write(feeds)
        assert [entry[3] % ALIGN for entry in layout] == [0, 0] and free_at % ALIGN == 0
        seen = peer.read(layout)
        for name, arr in feeds.items():
            np.testing.assert_array_equal(seen[name], arr)
            assert seen[name].dtype == arr.dtype
        peer.write({"y": np.full((2, 3), 5.0, np.float32)}, free_at)  # the host answers in place
        copied = mine.read([("y", "<f4", (2, 3), free_at)], copy=True)["y"]
        peer.write({"y": np.zeros((2, 3), np.float32)}, free_at)  # the next call reuses the buffer
        np.testing.assert_array_equal(copied, np.full((2, 3), 5.0, np.float32))
    finally:
        peer.close()
        mine.close()


def test_errors_cross_as_their_own_class():
    from edgeinfer.errors import InferenceError, InvalidInput, ModelNotReady
    from edgeinfer.serving.shared.wire import error_reply, raise_reply

    with pytest.raises(InvalidInput, match="wrong shape"):
        raise_reply(error_reply(InvalidInput("wrong shape")))
    with pytest.raises(ModelNotReady):
        raise_reply(error_reply(ModelNotReady("loading")))
    with pytest.raises(InferenceError, match="ZeroDivisionError: boom"):  # not ours: INTERNAL, named
        raise_reply(error_reply(ZeroDivisionError("boom")))


# -- the host's merging ---------------------------------------------------------------------

class _Held:
    """Holds the host runner's calls until opened; records each call's rows."""

    def __init__(self, runner):
        self.runner, self.inner = runner, runner.infer
        self.calls: list[int] = []
        self.entered, self.opened = threading.Event(), threading.Event()
        runner.infer = self

    fail_call: int | None = None  # index of a runner call that raises

    def __call__(self, feeds):
        self.calls.append(int(next(iter(feeds.values())).shape[0]))
        self.entered.set()
        assert self.opened.wait(30), "test gate never opened"
        if self.fail_call == len(self.calls) - 1:
            from edgeinfer.errors import InferenceError

            raise InferenceError("CUDA error: an illegal memory access was encountered (test)")
        return self.inner(feeds)

    def restore(self):
        self.opened.set()
        del self.runner.infer


def _queue_behind_a_held_call(coalescer, held, parts):
    """Part 0 takes the only slot and is held there; the other parts queue behind it one at a time
    (a known arrival order); then the gate opens. Returns (futures, outputs, rows ran) when all ended."""
    got, ran = [None] * len(parts), [None] * len(parts)

    def call(i):
        merged = coalescer.run({"input": parts[i]}, parts[i].shape[0])
        got[i], ran[i] = merged.outputs["logits"], merged.ran_rows
        assert merged.wait_s >= 0 and merged.run_s > 0

    with ThreadPoolExecutor(len(parts)) as pool:
        futures = [pool.submit(call, 0)]
        assert held.entered.wait(10)  # the only slot is busy with part 0
        for i in range(1, len(parts)):
            futures.append(pool.submit(call, i))
            end = time.monotonic() + 10
            while len(coalescer._queue) < i and time.monotonic() < end:
                time.sleep(0.01)
        held.opened.set()
        wait(futures, 30)
    held.restore()
    return futures, got, ran


def test_host_merges_waiting_batches_into_one_call_and_splits_them_back(classifier_onnx, tmp_path, media):
    h = HostInProcess(_config(tmp_path, classifier_onnx, instances=1))
    try:
        model = h.host.registry.get("imagenet")
        rng = np.random.default_rng(1)
        parts = [rng.standard_normal((n, 3, 224, 224)).astype(np.float32) for n in (1, 1, 2, 1)]
        expected = [model.runner.infer({"input": p})["logits"] for p in parts]
        coalescer = h.host.coalescer("imagenet")
        held = _Held(model.runner)
        futures, got, ran = _queue_behind_a_held_call(coalescer, held, parts)
        for f in futures:
            f.result()
        # 1 row alone, then the three waiting calls (1 + 2 + 1 rows) as one call of 4.
        assert held.calls == [1, 4]
        assert ran == [1, 4, 4, 4]  # each caller learns the rows it really ran with (its responses say so)
        for g, e in zip(got, expected):
            # Equal up to the runtime's per-batch-size arithmetic (on a GPU host ORT may pick the
            # CUDA EP: TF32 and other algorithms per batch size move logits in the 3rd decimal).
            assert np.array_equal(g.argmax(axis=1), e.argmax(axis=1))
            np.testing.assert_allclose(g, e, atol=1e-2)
        assert h.batch_sizes() == {1.0: 1, 4.0: 1}
    finally:
        h.close()


@pytest.mark.parametrize("fail_last", [False, True], ids=["ok", "last-call-fails"])
def test_host_cuts_rows_to_fill_a_bucket_rather_than_pad_mostly(classifier_onnx, tmp_path, fail_last):
    """Buckets [4, 16]: two waiting batches of 3 rows would be 6 rows padded to 16 (63% padding). The host
    runs 4 rows exactly (the second batch cut after 1 row) and then that batch's last 2 rows (padded to 4);
    every caller gets exactly its own rows back, the cut one assembled from both runner calls. When the
    second runner call fails, the cut call gets the error although 1 of its rows ran."""
    cfg = _config(tmp_path, classifier_onnx, instances=1, max_batch=16, pad_to_buckets="on")
    cfg.models[0].batching.buckets = [4, 16]
    h = HostInProcess(cfg)
    try:
        model = h.host.registry.get("imagenet")
        coalescer = h.host.coalescer("imagenet")
        assert coalescer.buckets == [4, 16]
        rng = np.random.default_rng(3)
        parts = [rng.standard_normal((n, 3, 224, 224)).astype(np.float32) for n in (1, 3, 3)]
        expected = [model.runner.infer({"input": p})["logits"] for p in parts]
        held = _Held(model.runner)
        held.fail_call = 2 if fail_last else None
        futures, got, ran = _queue_behind_a_held_call(coalescer, held, parts)
        for f in futures[:2]:
            f.result()
        if fail_last:
            from edgeinfer.errors import InferenceError

            with pytest.raises(InferenceError, match="illegal memory access"):
                futures[2].result()
            got[2], ran[2] = expected[2], 4  # it failed as a whole: nothing of it to compare
        else:
            futures[2].result()
        assert held.calls == [4, 4, 4]  # what the runner ran: 1 row padded, 4 exact, 2 padded
        assert ran == [1, 4, 4]  # the cut call reports the larger of its two runner calls
        assert h.batch_sizes() == ({1.0: 1, 4.0: 1} if fail_last else {1.0: 1, 2.0: 1, 4.0: 1})
        for g, e in zip(got, expected):
            assert g.shape == e.shape
            assert np.array_equal(g.argmax(axis=1), e.argmax(axis=1))
            np.testing.assert_allclose(g, e, atol=1e-2)
    finally:
        h.close()


def test_a_free_slot_waits_for_the_preferred_rows_up_to_merge_delay(classifier_onnx, tmp_path):
    """[batching] merge_delay_us: with preferred size 4, a lone 2-row batch waits at the host (the slot is
    free) until another 2 rows arrive, then both run as one call; a lone batch runs once the delay ends."""
    cfg = _config(tmp_path, classifier_onnx, instances=1, max_batch=8)
    cfg.models[0].batching.preferred_batch_sizes = [4]
    cfg.models[0].batching.merge_delay_us = 30_000_000  # far longer than the test: only rows end the wait
    h = HostInProcess(cfg)
    try:
        model = h.host.registry.get("imagenet")
        coalescer = h.host.coalescer("imagenet")
        assert (coalescer.fill_rows, coalescer.fill_delay_s) == (4, 30.0)
        held = _Held(model.runner)
        held.opened.set()
        x = np.random.default_rng(4).standard_normal((2, 3, 224, 224)).astype(np.float32)
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(coalescer.run, {"input": x}, 2)
            time.sleep(0.5)
            assert held.calls == [] and not first.done()  # a slot is free, but 2 rows < 4
            second = pool.submit(coalescer.run, {"input": x}, 2)
            a, b = first.result(30), second.result(30)
        assert held.calls == [4] and a.ran_rows == b.ran_rows == 4
        assert a.wait_s >= 0.4  # it waited for the second batch
        np.testing.assert_allclose(a.outputs["logits"], b.outputs["logits"], atol=1e-4)

        coalescer.fill_delay_s = 0.2  # a lone batch: the delay ends the wait
        alone = coalescer.run({"input": x}, 2)
        assert held.calls == [4, 2] and alone.ran_rows == 2 and alone.wait_s >= 0.19
        held.restore()
    finally:
        h.close()


def test_one_link_carries_many_calls_in_flight_and_answers_each_its_own(classifier_onnx, tmp_path):
    """A front-end's threads share one link: 6 calls of different rows wait at the host at once (its
    only slot held), run as merged calls, and each caller gets its own rows back, matched by call id,
    whatever order they finish in; buffers come back to the link's pool for the next calls."""
    h = HostInProcess(_config(tmp_path, classifier_onnx, instances=1))
    try:
        model = h.host.registry.get("imagenet")
        link = h.remote().link()
        spec = list(model.runner.outputs)
        rng = np.random.default_rng(5)
        parts = [rng.standard_normal((n, 3, 224, 224)).astype(np.float32) for n in (1, 2, 1, 3, 1, 2)]
        expected = [model.runner.infer({"input": p})["logits"] for p in parts]
        held = _Held(model.runner)
        with ThreadPoolExecutor(len(parts)) as pool:
            futures = [pool.submit(link.infer, "imagenet", {"input": parts[0]}, 1, spec)]
            assert held.entered.wait(10)  # the only slot holds call 0; the others queue behind it
            futures += [pool.submit(link.infer, "imagenet", {"input": p}, p.shape[0], spec) for p in parts[1:]]
            coalescer = h.host.coalescer("imagenet")
            end = time.monotonic() + 10
            while len(coalescer._queue) < len(parts) - 1 and time.monotonic() < end:
                time.sleep(0.01)
            assert len(coalescer._queue) == len(parts) - 1  # all in flight on the one link at once
            held.opened.set()
            answers = [f.result(30) for f in futures]
        held.restore()
        assert held.calls == [1, 8, 1]  # call 0 alone; then the 9 waiting rows, at most 8 a call
        for (outputs, ran), e in zip(answers, expected):
            assert outputs["logits"].shape == e.shape
            np.testing.assert_allclose(outputs["logits"], e, atol=1e-2)
            assert ran in (1, 8)
        pooled = len(link._free)
        assert 1 <= pooled <= len(parts)  # one buffer per call that was in flight, all back in the pool
        again, _ran = link.infer("imagenet", {"input": parts[3]}, 3, spec)  # reuses a pooled buffer
        np.testing.assert_allclose(again["logits"], expected[3], atol=1e-2)
        assert len(link._free) == pooled
    finally:
        h.close()


def test_closing_a_link_ends_its_waiting_calls_at_once(classifier_onnx, tmp_path):
    """A front-end shutting down closes its link while a call still waits at the host: the call gets
    ModelNotReady and close() returns promptly (its reader thread is woken, not left in recv)."""
    from edgeinfer.errors import ModelNotReady

    h = HostInProcess(_config(tmp_path, classifier_onnx, instances=1))
    try:
        model = h.host.registry.get("imagenet")
        remote = h.remote()
        link = remote.link()
        held = _Held(model.runner)
        x = np.zeros((1, 3, 224, 224), np.float32)
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(link.infer, "imagenet", {"input": x}, 1, list(model.runner.outputs))
            assert held.entered.wait(10)
            started = time.monotonic()
            remote.close()
            assert time.monotonic() - started < 2
            with pytest.raises(ModelNotReady, match="inference process is gone"):
                waiting.result(5)
            assert not link._reader.is_alive()
        held.restore()
    finally:
        h.close()


def test_one_batching_stage_front_end_sends_each_request_and_the_host_merges(
        classifier_onnx, tmp_path, start_daemon, media):
    """`shared_calls_in_flight` with no front-end fill delay: the front-end's batcher sends requests as
    they are preprocessed (calls of 1 row) and the host's merge delay forms the batches of all of them."""
    cfg = _config(tmp_path, classifier_onnx, instances=1)
    cfg.models[0].batching.preferred_batch_sizes = [8]
    cfg.models[0].batching.merge_delay_us = 200_000  # long enough that only 8 rows end the wait
    cfg.models[0].batching.max_queue_delay_us = 0
    cfg.models[0].batching.shared_calls_in_flight = 16
    h = HostInProcess(cfg)
    try:
        d = start_daemon(cfg, remote=h.remote())
        coffee = (media / "coffee.png").read_bytes()
        runner = d.daemon.registry.get("imagenet").runner
        assert runner.info.max_concurrency == 16  # the front-end batcher's slots: calls in flight
        before, calls_before = h.batch_sizes(), h.stage_seconds()["total"][1]  # the front-end's warm-up

        def one(_):
            with Client(d.address, timeout=60) as c:
                return c.infer("imagenet", coffee)

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(8)))
        assert {r.classes[0].index for r in results} == {ESPRESSO}
        assert {r.batch_size for r in results} == {8}  # all 8 ran in one merged call at the host
        after = h.batch_sizes()
        assert {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)} == {8.0: 1}
        # The host merged several front-end calls (mostly of 1 row; two requests preprocessed at
        # the same moment may share one) into that one runner call.
        assert 2 <= h.stage_seconds()["total"][1] - calls_before <= 8
        d.stop()
    finally:
        h.close()


# -- a front-end daemon on the host -----------------------------------------------------------

def test_front_end_answers_as_the_standalone_daemon(front_end, local, media):
    photos = ["coffee.png", "chelsea.png", "astronaut.png", "rocket.jpg"]
    photos = [p for p in photos if (media / p).exists()]
    with Client(front_end.address, timeout=60) as remote, Client(local.address, timeout=60) as here:
        for name in photos:
            data = (media / name).read_bytes()
            a, b = remote.infer("imagenet", data), here.infer("imagenet", data)
            assert [c.index for c in a.classes] == [c.index for c in b.classes], name
            np.testing.assert_allclose([c.score for c in a.classes], [c.score for c in b.classes], atol=1e-4)
        info = remote.get_model("imagenet")
        assert info.state == "ready" and "inference process shared (pid" in info.state_reason
        assert info.backend == "onnxruntime"


def _coffee_from_clients(address: str, media, clients: int, each: int) -> list:
    """`clients` concurrent clients, each sending coffee.png `each` times: every answer."""
    coffee = (media / "coffee.png").read_bytes()

    def one(_):
        with Client(address, timeout=60) as c:
            return [c.infer("imagenet", coffee) for _ in range(each)]

    with ThreadPoolExecutor(clients) as pool:
        return [r for batch in pool.map(one, range(clients)) for r in batch]


def test_concurrent_front_end_requests_are_batched_and_correct(front_end, host, media):
    before = sum(host.batch_sizes().values())
    results = _coffee_from_clients(front_end.address, media, clients=8, each=6)
    assert {r.classes[0].index for r in results} == {ESPRESSO}
    assert max(r.batch_size for r in results) > 1, "8 concurrent clients never shared a batch"
    assert max(r.batch_size for r in results) <= 8  # the host's merged rows, bounded by max_batch
    assert sum(host.batch_sizes().values()) > before  # the rows ran on the host's runner
    # The host times each front-end call: waiting for a slot + the runner call + writing back
    # fit inside its receive-to-reply total.
    stages = host.stage_seconds()
    assert stages["total"][1] >= 8  # calls (front-end batches), not requests
    assert stages["queue"][0] + stages["inference"][0] + stages["postprocess"][0] <= stages["total"][0] * 1.01
    assert stages["inference"][0] > 0


def test_the_host_answers_each_call_on_the_slot_that_ran_it(front_end, host, media, monkeypatch):
    """No hand-off on an answer's way back: the merge slot thread that ran a call's rows
    writes its outputs back and answers it; there is no reply thread to wake."""
    from edgeinfer.process import host as host_module

    answered_on = []
    answer = host_module._Link.answer

    def spy_answer(link, call_id, reply):
        answered_on.append(threading.current_thread().name)
        answer(link, call_id, reply)

    monkeypatch.setattr(host_module._Link, "answer", spy_answer)
    results = _coffee_from_clients(front_end.address, media, clients=6, each=3)
    assert {r.classes[0].index for r in results} == {ESPRESSO}
    assert answered_on and {name.rsplit("-", 1)[0] for name in answered_on} == {"merge-imagenet"}
    assert not any(t.name == "replies" for t in threading.enumerate())


def test_a_failing_batch_postprocess_answers_its_requests_and_the_front_end_lives_on(front_end, media,
                                                                                    monkeypatch):
    """A batch whose postprocessing raises answers its requests INTERNAL; the batcher's slot and the
    link go on answering every later request."""
    model = front_end.daemon.registry.get("imagenet")
    finish, failed = model.finish_batch, []

    def fail_once(outputs, items):
        if not failed:
            failed.append(len(items))
            raise ZeroDivisionError("postprocess bug (test)")
        return finish(outputs, items)

    monkeypatch.setattr(model, "finish_batch", fail_once)
    coffee = (media / "coffee.png").read_bytes()
    with Client(front_end.address, timeout=60) as c:
        with pytest.raises(ClientError) as err:
            c.infer("imagenet", coffee)
        assert err.value.code == "INTERNAL" and failed == [1]
        assert [c.infer("imagenet", coffee).classes[0].index for _ in range(3)] == [ESPRESSO] * 3


def test_big_tensor_batches_grow_the_channel_buffer(front_end, host):
    """8 float32 images (4.8 MB) exceed a channel's first 1 MiB buffer: it grows, answers stay exact."""
    x = np.random.default_rng(2).standard_normal((8, 3, 224, 224)).astype(np.float32)
    want = host.host.registry.get("imagenet").runner.infer({"input": x})["logits"]
    with Client(front_end.address, timeout=60) as c:
        got = c.infer("imagenet", tensors={"input": x}).outputs["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_bad_tensors_get_invalid_argument_and_the_host_keeps_serving(front_end, media):
    with Client(front_end.address, timeout=60) as c:
        with pytest.raises(ClientError) as err:
            c.infer("imagenet", tensors={"input": np.zeros((1, 3, 100, 100), np.float32)})
        assert err.value.code == "INVALID_ARGUMENT" and "224" in err.value.message
        assert c.infer("imagenet", (media / "coffee.png").read_bytes()).classes[0].index == ESPRESSO


def test_host_checks_what_it_is_sent_too(host):
    """A call that bypassed the front-end's checks still gets a worded InvalidInput back."""
    from edgeinfer.errors import InvalidInput

    link = host.remote().link()
    with pytest.raises(InvalidInput, match="expected dtype float32"):
        link.infer("imagenet", {"input": np.zeros((1, 3, 224, 224), np.float64)}, 1, [])


def test_a_model_the_host_cannot_load_fails_in_the_front_end_with_the_hosts_reason(
        classifier_onnx, tmp_path, start_daemon):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not an ONNX file")
    cfg = _config(tmp_path, classifier_onnx, extra_models=[
        {"name": "broken", "onnx": str(broken), "backends": ["onnxruntime"], "postprocess": {"task": "raw"}}])
    h = HostInProcess(cfg)
    try:
        d = start_daemon(_config(tmp_path, classifier_onnx, extra_models=[
            {"name": "broken", "onnx": str(broken), "backends": ["onnxruntime"], "postprocess": {"task": "raw"}}]),
            remote=h.remote())
        with Client(d.address, timeout=30) as c:
            info = c.get_model("broken")
            assert info.state == "failed"
            assert info.state_reason.startswith("in the shared inference process: no backend could load")
            assert any(a.backend == "onnxruntime" and a.outcome == "failed" for a in info.attempts)
            with pytest.raises(ClientError) as err:
                c.infer("broken", tensors={"x": np.zeros((1, 4), np.float32)})
            assert err.value.code == "UNAVAILABLE"
            assert c.get_model("imagenet").state == "ready"  # the other model is unaffected
        d.stop()
    finally:
        h.close()


def test_a_gone_host_answers_unavailable_not_a_crash(classifier_onnx, tmp_path):
    from edgeinfer.errors import ModelNotReady

    h = HostInProcess(_config(tmp_path, classifier_onnx))
    remote = h.remote()
    desc = remote.describe("imagenet")
    runner = remote.runner("imagenet", desc)
    x = np.zeros((1, 3, 224, 224), np.float32)
    assert runner.infer({"input": x})["logits"].shape == (1, 1000)
    h.host.close(5)  # the host goes away: its link threads end and close their ends
    for t in h.host._threads:
        t.join(10)
    with pytest.raises(ModelNotReady, match="inference process is gone"):
        runner.infer({"input": x})
    remote.close()


def test_front_end_runner_does_not_pad_the_host_pads():
    from edgeinfer.runtime.base import RunnerInfo, TensorSpec
    from edgeinfer.runtime.buckets import batch_buckets
    from edgeinfer.config import BatchingConfig
    from edgeinfer.serving.shared.remote import RemoteRunner
    from edgeinfer.serving.shared.wire import ModelDescription

    spec = TensorSpec("x", np.dtype(np.float32), (-1, 4))
    d = ModelDescription(state="ready", reason="", inputs=[spec], outputs=[spec],
                         info=RunnerInfo("onnxruntime", "fp32", "cuda:0", max_concurrency=2), host_pid=123)
    runner = RemoteRunner("m", d, models=None)
    cfg = BatchingConfig(max_batch=16, pad_to_buckets="on")
    assert batch_buckets(cfg, runner, 16) == []
    # Two batches per host slot in flight: the next is merged at the host while one runs.
    assert runner.info.max_concurrency == 4 and runner.info.details["inference_process"] == "shared (pid 123)"
    assert d.info.pads_batches is False  # the description itself is not changed


def test_outputs_with_dynamic_dimensions_come_back_inline(centerface_onnx, classifier_onnx, tmp_path, media,
                                                           start_daemon):
    """CenterFace's outputs have dynamic height and width: the front-end cannot reserve room for them, so
    the host sends them inline; detections equal the standalone daemon's."""
    face = {"name": "faces", "onnx": str(centerface_onnx), "backends": ["onnxruntime"], "warmup_runs": 1,
            "input": {"resize": "letterbox", "size": [640, 480], "pad_value": 0},
            "batching": {"max_batch": 4},
            "postprocess": {"task": "centerface", "score_threshold": 0.5, "nms_iou_threshold": 0.3}}
    h = HostInProcess(_config(tmp_path, classifier_onnx, extra_models=[face]))
    try:
        remote = start_daemon(_config(tmp_path, classifier_onnx, extra_models=[face]), remote=h.remote())
        local_cfg = _config(tmp_path, classifier_onnx, extra_models=[face])
        local_cfg.server.inference = "per-process"
        local = start_daemon(local_cfg)
        photo = (media / "astronaut.png").read_bytes()
        with Client(remote.address, timeout=60) as a, Client(local.address, timeout=60) as b:
            got, want = a.infer("faces", photo), b.infer("faces", photo)
        assert len(got.detections) == len(want.detections) >= 1
        for d, e in zip(got.detections, want.detections):
            np.testing.assert_allclose(d.box, e.box, atol=0.5)
            assert abs(d.score - e.score) < 1e-3
        remote.stop()
        local.stop()
    finally:
        h.close()



def test_an_output_without_a_batch_axis_comes_back_whole(tmp_path):
    """A raw model whose output is a scalar (no batch axis) runs unbatched; the host hands the runner's
    output back as it is, without trying to split it per caller."""
    import onnx
    from onnx import TensorProto, helper

    from edgeinfer.config import parse_config

    graph = helper.make_graph([helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0)], "sum",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("total", TensorProto.FLOAT, [])])
    path = tmp_path / "sum.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # what every onnxruntime we support loads
    onnx.save(model, path)
    cfg = parse_config({"server": {"inference": "shared", "listen": "127.0.0.1:0"}, "metrics": {"enabled": False},
                        "cache": {"dir": str(tmp_path)},
                        "models": [{"name": "sum", "onnx": str(path), "backends": ["onnxruntime"],
                                    "postprocess": {"task": "raw"}}]}, source="test_shared_inference")
    h = HostInProcess(cfg)
    try:
        remote = h.remote()
        runner = remote.runner("sum", remote.describe("sum"))
        out = runner.infer({"x": np.arange(4, dtype=np.float32)[None]})
        assert out["total"].shape == () and float(out["total"]) == 6.0
        remote.close()
    finally:
        h.close()
