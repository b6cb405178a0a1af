"""Property-based fuzzing of the request path against the real daemon (hypothesis).

Invariant: every answer is OK or a documented client status, never UNKNOWN or INTERNAL; the daemon
keeps answering; its memory stays bounded. The daemon runs in its own process (`edgeinfer serve`), so
that its RSS is its own: hypothesis, in this process, keeps up to 10,000 examples per test with the
values drawn for them (its engine's cache), ~550 MB at these inputs' sizes, which an in-process
daemon's RSS would count. CI runs a bounded number of inputs
(EDGEINFER_FUZZ_EXAMPLES, default 120); a long run sets it higher and EDGEINFER_FUZZ_REPORT to a
file that gets the figures (docs/security.md has those of the last long run).
"""
from __future__ import annotations

import collections
import json
import os
import time
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeinfer_proto.edgeinfer.v1 import inference_pb2 as pb
from testkit.fuzzing import CLIENT_STATUSES, wire_messages
from testkit.memory import rss_mb
from testkit.notify import ServeProcess

ROOT = Path(__file__).resolve().parents[2]

EXAMPLES = int(os.environ.get("EDGEINFER_FUZZ_EXAMPLES", "120"))
REPORT = os.environ.get("EDGEINFER_FUZZ_REPORT")
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not REPORT,
                    suppress_health_check=list(HealthCheck))
# The daemon's growth over its start. Measured (docs/security.md): +76 MB after 34,253 inputs, +96 MB
# at the peak, level from the first few thousand on. What legitimately grows it: ONNX Runtime's arena
# for the request shapes the fuzzer can reach (tensors of the right size are at most 4 MiB: batch <= 6
# of EfficientNet's input) and the allocator's per-thread heaps.
RSS_BOUND_MB = 300

pytestmark = pytest.mark.slow


class Tally:
    def __init__(self, served: ServeProcess):
        self.served = served
        self.pid = str(served.proc.pid)
        self.statuses = collections.Counter()
        self.inputs = 0
        self.hangs = 0
        self.base = rss_mb(self.pid)
        self.peak = self.base
        self.by_inputs: list[tuple[int, int]] = []  # (inputs, daemon RSS MB) every 1,000 inputs
        self.start = time.monotonic()

    def see(self, code: str) -> None:
        # A daemon that died answers UNAVAILABLE, a client status: its exit is what tells a crash.
        status = self.served.proc.poll()
        assert status is None, f"daemon exited ({status}) after {self.inputs} inputs:\n{self.served.log_text()[-4000:]}"
        self.inputs += 1
        self.statuses[code] += 1
        rss = rss_mb(self.pid)
        self.peak = max(self.peak, rss)
        if self.inputs % 1000 == 0:
            self.by_inputs.append((self.inputs, round(rss)))


@pytest.fixture(scope="module")
def served(tmp_path_factory, centerface_onnx, classifier_onnx):
    """configs/dev.toml served by `edgeinfer serve` in its own process, without metrics."""
    folder = tmp_path_factory.mktemp("fuzz-daemon")
    text = (ROOT / "configs" / "dev.toml").read_text()
    for old, new in (('"../', f'"{ROOT}/'), ('[metrics]\nlisten = "127.0.0.1:9400"', "[metrics]\nenabled = false")):
        assert old in text, f"configs/dev.toml changed: no {old!r} to replace"
        text = text.replace(old, new)
    config = folder / "edgeinfer.toml"
    config.write_text(text + f'\n[cache]\ndir = "{folder / "cache"}"\n')
    d = ServeProcess(config, folder / "serve.log")
    try:
        d.wait_serving()
        yield d
    finally:
        d.kill()


@pytest.fixture(scope="module")
def raw_calls(served):
    with grpc.insecure_channel(served.address, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        unary = ch.unary_unary("/edgeinfer.v1.Inference/Infer")
        stream = ch.stream_stream("/edgeinfer.v1.Inference/InferStream",
                                  response_deserializer=pb.StreamResponse.FromString)
        yield unary, stream


@pytest.fixture(scope="module")
def tally(served, raw_calls):
    t = Tally(served)
    yield t
    if REPORT:
        with open(REPORT, "w") as f:
            json.dump({"inputs": t.inputs, "seconds": round(time.monotonic() - t.start, 1),
                       "statuses": dict(t.statuses), "hangs": t.hangs, "crashes": 0,
                       "rss_start_mb": round(t.base), "rss_peak_mb": round(t.peak),
                       "rss_end_mb": round(rss_mb(t.pid)), "rss_by_inputs": t.by_inputs,
                       "test_process_rss_mb": round(rss_mb())},
                      f, indent=2)


def _unary_code(call, data: bytes) -> str:
    try:
        call(data, timeout=60)
    except grpc.RpcError as exc:
        code = exc.code()
        assert code.name in CLIENT_STATUSES, f"{code.name}: {exc.details()}"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return "HANG"
        return code.name
    return "OK"


@SETTINGS
@given(data=wire_messages())
def test_unary_answers_a_client_status(raw_calls, tally, data):
    code = _unary_code(raw_calls[0], data)
    if code == "HANG":
        tally.hangs += 1
    tally.see(code)
    assert tally.hangs == 0
    assert tally.peak - tally.base < RSS_BOUND_MB, f"RSS {tally.base:.0f} -> peak {tally.peak:.0f} MB"


@settings(SETTINGS, max_examples=max(10, EXAMPLES // 6))
@given(frames=st.lists(wire_messages(), min_size=1, max_size=4))
def test_stream_answers_every_frame(raw_calls, tally, frames):
    answers = list(raw_calls[1](iter(frames), timeout=60))
    assert [a.sequence for a in answers] == list(range(len(frames)))
    for a in answers:
        code = a.error.code if a.WhichOneof("result") == "error" else "OK"
        assert code in CLIENT_STATUSES, f"{code}: {a.error.message}"
        tally.see(code)
    assert tally.peak - tally.base < RSS_BOUND_MB, f"RSS {tally.base:.0f} -> peak {tally.peak:.0f} MB"


def test_daemon_still_serves_after_fuzzing(served, media, tally):
    from edgeinfer_client import Client

    assert served.proc.poll() is None, served.log_text()[-4000:]
    with Client(served.address, timeout=60) as c:
        assert c.infer("faces", media / "astronaut.png").detections
    assert tally.inputs > 0
