"""The capture's parts with real sources: mailbox, backoff, subscriber queues, the state machine."""
from __future__ import annotations

import asyncio
import random
import socket
import threading
import time

import numpy as np
import pytest
from testkit.streams_kit import wait_for

from edgeinfer.config import StreamConfig
from edgeinfer.streams.capture import Capture, Frame, Mailbox, State, backoff_delay
from edgeinfer.streams.manager import Subscriber


def _frame(i: int) -> Frame:
    return Frame(i, np.zeros((2, 2, 3), np.uint8), time.time(), time.perf_counter())


def test_mailbox_keeps_only_the_newest_frame_and_counts_the_late_ones():
    box = Mailbox()
    for i in range(5):
        box.put(_frame(i))
    assert box.take().index == 4
    assert box.dropped == 4
    assert box.take() is None
    box.put(_frame(5))
    assert box.take().index == 5 and box.dropped == 4


def test_backoff_doubles_with_jitter_up_to_the_cap():
    rng = random.Random(1)
    for attempt in range(12):
        ceiling = min(8.0, 0.5 * 2 ** attempt)
        delays = [backoff_delay(attempt, 8.0, rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 40  # jittered, not one value
    assert backoff_delay(1000, 3.0, rng) <= 3.0


def test_a_slow_subscriber_loses_its_oldest_results_only():
    async def main():
        slow, fast = Subscriber(3), Subscriber(100)
        for i in range(10):
            slow.offer(i)
            fast.offer(i)
        assert [await slow.get() for _ in range(3)] == [7, 8, 9]
        assert slow.dropped == 7
        assert [await fast.get() for _ in range(10)] == list(range(10)) and fast.dropped == 0
        slow.close()
        assert await slow.get() is None

    asyncio.run(main())


def _cfg(source, **kw) -> StreamConfig:
    kw.setdefault("stall_timeout_s", 1.0)
    kw.setdefault("reconnect_max_s", 0.5)
    return StreamConfig(name="t", source=str(source), model="m", **kw)


def test_missing_file_reconnects_with_the_reason_and_max_reconnects_stops_it(tmp_path):
    cap = Capture(_cfg(tmp_path / "nope.mp4", max_reconnects=2))
    cap.start()
    try:
        assert wait_for(lambda: cap.state is State.STOPPED, 10), cap.state
        assert "file not found" in cap.last_error and "nope.mp4" in cap.last_error
        assert "gave up after 2 reconnect attempts" in cap.state_reason
        # Failed attempts in a row are one state change, logged once.
        assert cap.reconnects == 2 and cap.state_changes["reconnecting"] == 1
    finally:
        cap.stop()


def test_a_file_without_loop_plays_once_and_stops(face_video):
    cap = Capture(_cfg(face_video, loop=False, fps=0))
    cap.start()
    try:
        assert wait_for(lambda: cap.state is State.STOPPED, 15), cap.state
        assert cap.state_reason == "end of file (loop = false)"
        assert cap.frames_in == 120  # every frame, once, at the file's own rate
        assert cap.state_changes["live"] == 1
    finally:
        cap.stop()


def test_a_looped_file_sampled_to_fps_keeps_going(face_video):
    cap = Capture(_cfg(face_video, fps=10))
    cap.start()
    try:
        assert wait_for(lambda: cap.frames_in >= 150, 15)  # past the 120-frame end: looped
        taken = cap.frames_in - cap.frames_skipped
        # 30 fps sampled to 10: a third of the frames reach the mailbox.
        assert 0.25 < taken / cap.frames_in < 0.42, (taken, cap.frames_in)
        assert cap.state is State.LIVE and cap.reconnects == 0
    finally:
        cap.stop()


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never sends a byte."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    accepted = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(srv.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1], accepted
    stop.set()
    t.join(2)
    for c in accepted:
        c.close()
    srv.close()


@pytest.mark.parametrize("scheme", ["rtsp", "http"])
def test_a_silent_server_is_detected_within_stall_timeout_and_reconnected(silent_server, scheme):
    port, accepted = silent_server
    cap = Capture(_cfg(f"{scheme}://127.0.0.1:{port}/cam", stall_timeout_s=1.0, reconnect_max_s=0.5))
    started = time.monotonic()
    cap.start()
    try:
        assert wait_for(lambda: cap.state is State.RECONNECTING, 5), cap.state
        detected = time.monotonic() - started
        assert detected < 1.0 + 1.0, f"took {detected:.1f} s for a 1 s stall_timeout_s"
        assert "sent no video within 1 s" in cap.last_error, cap.last_error
        # ...and it keeps trying: new connections reach the server.
        assert wait_for(lambda: cap.reconnects >= 2 and len(accepted) >= 4, 10), (cap.reconnects, len(accepted))
    finally:
        cap.stop()


def test_a_reader_stuck_in_an_open_that_never_returns_is_abandoned_and_replaced(face_video):
    """A driver call that never returns (a wedged V4L2 device; none can be wedged here, so the
    opener blocks on an event): the supervisor gives the connection up after its bound and opens
    the source again on a new reader, which here succeeds."""
    from edgeinfer.streams.decode import open_source

    release = threading.Event()
    calls = []

    def opener(cfg):
        calls.append(time.monotonic())
        if len(calls) == 1:
            release.wait(30)  # the first open hangs
        return open_source(cfg)

    cap = Capture(_cfg(face_video, stall_timeout_s=0.5, reconnect_max_s=0.5), opener=opener)
    cap.start()
    try:
        assert wait_for(lambda: cap.state is State.LIVE, 10), (cap.state, cap.last_error)
        assert "opening the source did not return within 2 s" in cap.last_error
        assert len(calls) == 2 and cap.reconnects == 1
    finally:
        release.set()
        cap.stop()


def test_frames_skipped_by_the_sampling_are_decoded_but_never_converted(face_video):
    """A stream at 5 fps from a 30 fps file: every frame is grabbed (decoding needs them all),
    only the sampled ones are retrieved (the colour conversion, or NVDEC's copy)."""
    from edgeinfer.streams.decode import open_source

    retrieved = []

    def opener(cfg):
        source, note = open_source(cfg)
        real = source.retrieve

        def retrieve():
            retrieved.append(time.monotonic())
            return real()

        source.retrieve = retrieve
        return source, note

    put = []
    cap = Capture(_cfg(face_video, fps=5.0), on_frame=lambda: None, opener=opener)
    cap.mailbox.on_put = lambda: put.append(1)
    cap.start()
    try:
        assert wait_for(lambda: cap.frames_in >= 60, 15), (cap.state, cap.last_error)
        cap.stop()
        assert cap.frames_skipped > 0.7 * cap.frames_in
        assert len(retrieved) == len(put) == cap.frames_in - cap.frames_skipped
        assert cap.latest is not None and cap.latest.pixels.shape == (144, 176, 3)
    finally:
        cap.stop()
