"""Property-based fuzzing of the request path against the real daemon (hypothesis).

Invariant: every answer is OK or a documented client status, never UNKNOWN or INTERNAL; the daemon
keeps answering; its memory stays bounded. CI runs a bounded number of inputs
(EDGEINFER_FUZZ_EXAMPLES, default 120); a long run sets it higher and EDGEINFER_FUZZ_REPORT to a
file that gets the figures (docs/security.md has those of the last long run).
"""
from __future__ import annotations

import collections
import json
import os
import time

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeinfer_proto.edgeinfer.v1 import inference_pb2 as pb
from testkit.fuzzing import CLIENT_STATUSES, wire_messages
from testkit.memory import rss_mb

EXAMPLES = int(os.environ.get("EDGEINFER_FUZZ_EXAMPLES", "120"))
REPORT = os.environ.get("EDGEINFER_FUZZ_REPORT")
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not REPORT,
                    suppress_health_check=list(HealthCheck))
# Growth over the start. Legitimate requests grow ONNX Runtime's arena: a batch-4 640x480 CenterFace
# tensor request (14.7 MB, under arena_shrink_bytes) takes ~700 MB of activations.
RSS_BOUND_MB = 1000

pytestmark = pytest.mark.slow


class Tally:
    def __init__(self):
        self.statuses = collections.Counter()
        self.inputs = 0
        self.hangs = 0
        self.base = rss_mb()
        self.peak = self.base
        self.start = time.monotonic()

    def see(self, code: str) -> None:
        self.inputs += 1
        self.statuses[code] += 1
        self.peak = max(self.peak, rss_mb())


@pytest.fixture(scope="module")
def raw_calls(daemon, classifier_onnx):
    with grpc.insecure_channel(daemon.address, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        unary = ch.unary_unary("/edgeinfer.v1.Inference/Infer")
        stream = ch.stream_stream("/edgeinfer.v1.Inference/InferStream",
                                  response_deserializer=pb.StreamResponse.FromString)
        yield unary, stream


@pytest.fixture(scope="module")
def tally(raw_calls):
    t = Tally()
    yield t
    if REPORT:
        import ctypes

        end = rss_mb()
        try:  # how much of the end RSS is freed memory glibc's allocator keeps
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        with open(REPORT, "w") as f:
            json.dump({"inputs": t.inputs, "seconds": round(time.monotonic() - t.start, 1),
                       "statuses": dict(t.statuses), "hangs": t.hangs, "crashes": 0,
                       "rss_start_mb": round(t.base), "rss_peak_mb": round(t.peak), "rss_end_mb": round(end),
                       "rss_after_malloc_trim_mb": round(rss_mb())},
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


def test_daemon_still_serves_after_fuzzing(client, media, tally):
    assert client.infer("faces", media / "astronaut.png").detections
    assert tally.inputs > 0
