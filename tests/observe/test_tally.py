"""The folded request tally exports exactly what prometheus_client's own instruments would."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from edgeinfer.observe import tally as tally_mod
from edgeinfer.observe.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, STAGES
from edgeinfer.observe.tally import RequestTally


def _samples(registry: CollectorRegistry, name_prefix: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in registry.collect() for s in fam.samples if s.name.startswith(name_prefix)}


@pytest.fixture
def pair():
    ours, ref = CollectorRegistry(), CollectorRegistry()
    t = RequestTally(LATENCY_BUCKETS, STAGES, BATCH_BUCKETS)
    ours.register(t)
    refs = dict(
        requests=Counter("edgeinfer_requests", "x", ["model", "code"], registry=ref),
        latency=Histogram("edgeinfer_request_latency_seconds", "x", ["model", "stage"], buckets=LATENCY_BUCKETS,
                          registry=ref),
        batch=Histogram("edgeinfer_batch_size", "x", ["model"], buckets=BATCH_BUCKETS, registry=ref),
    )
    return t, ours, ref, refs


def test_same_exposition_as_prometheus_client(pair, monkeypatch):
    # Fold often, so both the request-path fold and the scrape-time fold run.
    monkeypatch.setattr(tally_mod, "FOLD_EVERY", 97)
    t, ours, ref, refs = pair
    rng = np.random.default_rng(7)
    for i in range(1000):
        model = ("a", "b")[i % 2]
        # Microseconds, spread over every bucket, with values exactly on bounds too.
        row = tuple(int(v) for v in rng.choice([0, 100, 250, 1000, 10_000_000, 20_000_000, int(rng.integers(0, 3e6))],
                                               size=len(STAGES)))
        code = ("OK", "INVALID_ARGUMENT")[i % 3 == 0]
        if code == "OK" and i % 4 == 1:
            t.ok(model, row)  # the inline short path's one-step form of the two calls below
        else:
            t.timing(model, row)
            t.request(model, code)
        for stage, us in zip(STAGES, row):
            refs["latency"].labels(model, stage).observe(us / 1e6)
        refs["requests"].labels(model, code).inc()
        if i % 5 == 0:
            size = int(rng.choice([1, 2, 3, 8, 16, 300]))
            t.batch(model, size)
            refs["batch"].labels(model).observe(size)
    got, want = _samples(ours, "edgeinfer_"), _samples(ref, "edgeinfer_")
    want = {k: v for k, v in want.items() if not k[0].endswith("_created")}
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key


def test_declared_models_export_zeros_and_threads_lose_nothing():
    t = RequestTally(LATENCY_BUCKETS, STAGES, BATCH_BUCKETS)
    reg = CollectorRegistry()
    reg.register(t)
    t.declare(["m"])
    assert reg.get_sample_value("edgeinfer_requests_total", {"model": "m", "code": "OK"}) == 0
    assert reg.get_sample_value("edgeinfer_deadline_expired_total", {"model": "m"}) == 0
    assert reg.get_sample_value("edgeinfer_queue_full_total", {"model": "m"}) == 0

    def hammer():
        for _ in range(5000):
            t.request("m", "OK")
            t.timing("m", (1, 2, 3, 4, 10))
            t.deadline_expired("m")

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for th in threads:
        th.start()
    for _ in range(20):  # scrapes while the threads record
        reg.get_sample_value("edgeinfer_requests_total", {"model": "m", "code": "OK"})
    for th in threads:
        th.join()
    assert reg.get_sample_value("edgeinfer_requests_total", {"model": "m", "code": "OK"}) == 20000
    assert reg.get_sample_value("edgeinfer_deadline_expired_total", {"model": "m"}) == 20000
    assert reg.get_sample_value("edgeinfer_request_latency_seconds_count",
                                {"model": "m", "stage": "total"}) == 20000
    assert reg.get_sample_value("edgeinfer_request_latency_seconds_sum",
                                {"model": "m", "stage": "total"}) == pytest.approx(20000 * 10e-6)
