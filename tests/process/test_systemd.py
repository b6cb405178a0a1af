"""The daemon as systemd runs it: real `edgeinfer serve` processes, a real NOTIFY_SOCKET, real signals.

Each test starts `python -m edgeinfer.cli serve` with this checkout's sources,
reads what it tells systemd over an AF_UNIX datagram socket the test binds,
and drives it with SIGHUP / SIGTERM under real client load.
"""
from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from testkit.notify import NotifySocket, ServeProcess

from edgeinfer_client import Client, ClientError, StreamError


@pytest.fixture
def notify():
    sock = NotifySocket()
    yield sock
    sock.close()


def _trivial_config(path: Path, cache: Path, models: list[tuple[str, str, Path, int]], server: str = "") -> None:
    """A config of trivial models: (name, version, onnx path, max_batch) each."""
    text = f'[server]\nworkers = 4\n{server}\n[metrics]\nenabled = false\n[cache]\ndir = "{cache}"\n'
    for name, version, onnx, max_batch in models:
        text += (f'\n[[models]]\nname = "{name}"\nversion = "{version}"\nonnx = "{onnx}"\nbackends = ["onnxruntime"]\n'
                 f'warmup_runs = 1\n[models.postprocess]\ntask = "raw"\n'
                 f'[models.onnxruntime]\nproviders = ["CPUExecutionProvider"]\nintra_op_threads = 1\n'
                 f'[models.batching]\nmax_batch = {max_batch}\nmax_queue_delay_us = 500\n')
    path.write_text(text)


def _faces_config(path: Path, cache: Path, centerface_onnx: Path, server: str = "", batching: str = "") -> None:
    path.write_text(f'[server]\nworkers = 4\n{server}\n[metrics]\nenabled = false\n[cache]\ndir = "{cache}"\n'
                    f'\n[[models]]\nname = "faces"\nonnx = "{centerface_onnx}"\nbackends = ["onnxruntime"]\n'
                    f'warmup_runs = 1\n[models.input]\nresize = "letterbox"\nsize = [640, 480]\npad_value = 0\n'
                    f'[models.postprocess]\ntask = "centerface"\n[models.batching]\n{batching}\n')


X = np.arange(64, dtype=np.float32).reshape(1, 64)


def test_notify_sequence_ready_status_watchdog_reload_stopping(notify, trivial_onnx, tmp_path):
    config = tmp_path / "edgeinfer.toml"
    _trivial_config(config, tmp_path / "cache", [("trivial", "1", trivial_onnx, 1)])
    log = tmp_path / "serve.log"
    log.touch()
    st = os.stat(log)  # stderr goes to this file: JOURNAL_STREAM names it, as systemd names its stream
    d = ServeProcess(config, log, env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000",
                                       "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    try:
        t_ready, _ = notify.wait_for(lambda f: f.get("READY") == "1", what="READY=1")
        notify.wait_for(lambda f: "serving 1 model" in f.get("STATUS", ""), what="STATUS serving")
        # Pings at half of WatchdogSec (1 s): several a second, and they keep coming.
        t0, _ = notify.wait_for(lambda f: f.get("WATCHDOG") == "1", after=t_ready, what="WATCHDOG=1")
        time.sleep(1.6)
        pings = notify.times_of("WATCHDOG", since=t0)
        assert len(pings) >= 3 and max(np.diff(pings)) < 0.9, pings

        t_hup = time.monotonic()
        d.signal(signal.SIGHUP)
        t_rel, reloading = notify.wait_for(lambda f: f.get("RELOADING") == "1", after=t_hup, what="RELOADING=1")
        # CLOCK_MONOTONIC in microseconds, read by the daemon after the signal was sent
        sent_us = int(reloading["MONOTONIC_USEC"])
        now_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert t_hup * 1e6 - 1e6 < sent_us <= now_us
        notify.wait_for(lambda f: f.get("READY") == "1", after=t_rel, what="READY=1 after the reload")

        # The same through `edgeinfer-client reload` (Admin.Reload), then the asyncio client.
        import asyncio
        import subprocess
        import sys

        from edgeinfer_client import AsyncClient

        cli = subprocess.run([sys.executable, "-m", "edgeinfer_client.cli", "--address", d.address, "reload"],
                             capture_output=True, text=True, timeout=60, env=d.env)
        assert cli.returncode == 0, cli.stderr
        assert cli.stdout.splitlines() == [f"reloaded {config}", "  trivial          unchanged"]

        async def aio_reload():
            async with AsyncClient(d.address, timeout=30) as c:
                return await c.reload()

        assert [(m.name, m.action) for m in asyncio.run(aio_reload()).models] == [("trivial", "unchanged")]

        t_term = time.monotonic()
        d.signal(signal.SIGTERM)
        assert d.wait(30) == 0, d.log_text()
        notify.wait_for(lambda f: f.get("STOPPING") == "1", after=t_term, timeout=1, what="STOPPING=1")
    finally:
        d.kill()
    # Under journald: "<priority>" prefixes and no timestamp of our own.
    lines = [line for line in d.log_text().splitlines() if line.strip()]
    assert lines and all(line.startswith(("<6>", "<4>", "<3>", "<7>", "<2>")) for line in lines), lines[:5]
    assert not any(line[3:7].isdigit() for line in lines)
    assert any(line.startswith("<6>edgeinfer.process.daemon: reloaded") for line in lines)


def test_ready_all_models_waits_for_the_models_and_extends_the_start_timeout(notify, centerface_onnx, tmp_path):
    config = tmp_path / "edgeinfer.toml"
    _faces_config(config, tmp_path / "cache", centerface_onnx, server='ready = "all-models"')
    d = ServeProcess(config, tmp_path / "serve.log", env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"})
    try:
        t_ready, _ = notify.wait_for(lambda f: f.get("READY") == "1", timeout=60, what="READY=1")
        before = [f for t, f in notify.snapshot() if t < t_ready]
        # Before READY: the port was bound and the model loading, which STATUS said, with the start
        # timeout extended meanwhile.
        assert any("loading 1 model: faces" in f.get("STATUS", "") for f in before), before
        assert any(int(f.get("EXTEND_TIMEOUT_USEC", 0)) >= 30_000_000 for f in before), before
        assert not any("WATCHDOG" in f and "READY" in f for f in before)
        with Client(d.address, timeout=10) as c:
            assert c.health("faces") == "SERVING"
        notify.wait_for(lambda f: f.get("STATUS", "").startswith("serving 1 model (faces)"), what="STATUS serving")
        d.signal(signal.SIGTERM)
        assert d.wait(30) == 0
    finally:
        d.kill()


class _Load:
    """`threads` clients calling Infer in a loop; every answer or error recorded with its send time."""

    def __init__(self, address: str, call, threads: int = 8):
        self.address = address
        self.call = call
        self.stop = threading.Event()
        self.results: list[tuple[float, float, object]] = []  # (sent, answered, InferResult or ClientError)
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, index: int) -> None:
        with Client(self.address, timeout=30) as c:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    out = self.call(c, index)
                except ClientError as exc:
                    out = exc
                with self._lock:
                    self.results.append((sent, time.monotonic(), out))
                if isinstance(out, ClientError) and out.code == "UNAVAILABLE":
                    time.sleep(0.05)

    def finish(self) -> list[tuple[float, float, object]]:
        self.stop.set()
        for t in self._threads:
            t.join(60)
        return list(self.results)

    def wait_version(self, model: str, version: str, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if any(not isinstance(r, ClientError) and (r.model, r.model_version) == (model, version)
                       for _s, _a, r in self.results):
                    return
            time.sleep(0.05)
        raise AssertionError(f"no response of {model} carried model_version {version!r}")


@pytest.mark.slow
def test_sighup_under_load_swaps_models_without_a_failed_request(trivial_onnx, tmp_path):
    config = tmp_path / "edgeinfer.toml"
    cache = tmp_path / "cache"
    copy_a, copy_b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    shutil.copy(trivial_onnx, copy_a)
    shutil.copy(trivial_onnx, copy_b)
    # "inline" runs on the event loop (tiny model, unbatched), "batched" through a batcher.
    _trivial_config(config, cache, [("inline", "1", copy_a, 1), ("batched", "1", copy_a, 4)])
    d = ServeProcess(config, tmp_path / "serve.log")
    try:
        d.wait_serving()
        load = _Load(d.address, lambda c, i: c.infer("inline" if i % 2 else "batched", tensors={"x": X}))
        time.sleep(1.0)

        # A new version from another file: loaded beside, swapped in, the old one drained.
        _trivial_config(config, cache, [("inline", "2", copy_b, 1), ("batched", "2", copy_b, 4)])
        d.signal(signal.SIGHUP)
        load.wait_version("inline", "2")
        load.wait_version("batched", "2")
        time.sleep(1.0)

        # An invalid config: refused, logged with its reason, the running one serves on.
        config.write_text('[server]\nworkers = -1\n')
        d.signal(signal.SIGHUP)
        end = time.monotonic() + 20
        while "reload refused" not in d.log_text() and time.monotonic() < end:
            time.sleep(0.1)
        assert "[server] workers: expected a positive number" in d.log_text()
        time.sleep(0.5)
        assert d.proc.poll() is None

        # The same through Admin.Reload; the ONNX file's content changes under the same path.
        import onnx

        model = onnx.load(str(trivial_onnx))
        model.doc_string = "retrained"  # other bytes, the same y = x + 1
        onnx.save(model, str(copy_b))
        _trivial_config(config, cache, [("inline", "3", copy_b, 1), ("batched", "2", copy_b, 4)])
        with Client(d.address, timeout=60) as c:
            result = c.reload()
        assert result.accepted and result.config_path == str(config)
        actions = {m.name: (m.action, m.detail) for m in result.models}
        assert actions["inline"] == ("updated", "version 2 -> 3, onnx file content")
        assert actions["batched"] == ("updated", "onnx file content")
        load.wait_version("inline", "3")
        time.sleep(0.5)
        results = load.finish()
    finally:
        d.kill()
    failures = [r for _s, _a, r in results if isinstance(r, ClientError)]
    assert not failures, failures[:5]
    assert len(results) > 200
    # Once a thread saw a new version, none of its later answers came from the old one.
    for name in ("inline", "batched"):
        versions = [r.model_version for _s, _a, r in sorted(results, key=lambda e: e[0]) if r.model == name]
        first_new = versions.index("2")
        assert "1" not in versions[first_new + 50:], name
    log = d.log_text()
    assert "reload: model inline updated (onnx, version 1 -> 2)" in log
    assert "model inline: the replaced version answered its requests and is unloaded" in log


@pytest.mark.slow
def test_sigterm_under_load_answers_every_request_sent_before(centerface_onnx, media, tmp_path):
    config = tmp_path / "edgeinfer.toml"
    _faces_config(config, tmp_path / "cache", centerface_onnx)
    image = (media / "astronaut.png").read_bytes()
    d = ServeProcess(config, tmp_path / "serve.log")
    try:
        d.wait_serving()
        load = _Load(d.address, lambda c, _i: c.infer("faces", image))
        time.sleep(2.0)
        t_term = time.monotonic()
        d.signal(signal.SIGTERM)
        code = d.wait(30)
        results = load.finish()
    finally:
        d.kill()
    assert code == 0, d.log_text()
    # Sent before the signal (with 20 ms for the bytes to reach the server): answered.
    before = [(s, a, r) for s, a, r in results if s < t_term - 0.02]
    failed_before = [r for _s, _a, r in before if isinstance(r, ClientError)]
    assert not failed_before, failed_before[:3]
    # Some were still running when the signal came, and were answered after it.
    assert any(a > t_term for _s, a, _r in before)
    # Sent after: refused as UNAVAILABLE (the client retries elsewhere). The one exception is
    # gRPC core's own: a call that had reached the socket but not yet the daemon's handlers when
    # the listener closed is reset, and the client reads CANCELLED (seen with grpcio 1.62 on a
    # loaded 2-core machine). It never ran; nothing else may appear.
    after = [r for s, _a, r in results if s > t_term and isinstance(r, ClientError)]
    refused = [r for r in after if r.code == "UNAVAILABLE"]
    reset = [r for r in after if r.code == "CANCELLED" and r.message == "CANCELLED"]
    others = [r for r in after if r not in refused and r not in reset]
    assert refused and not others and len(reset) <= len(refused), (len(after), others[:5], len(reset))


@pytest.mark.slow
def test_overload_of_streams_sheds_and_keeps_the_watchdog_fed(notify, centerface_onnx, media, tmp_path):
    config = tmp_path / "edgeinfer.toml"
    _faces_config(config, tmp_path / "cache", centerface_onnx, batching="max_queue = 4")
    image = (media / "astronaut.png").read_bytes()
    watchdog_s = 4.0
    d = ServeProcess(config, tmp_path / "serve.log",
                     env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": str(int(watchdog_s * 1e6))})
    stop = threading.Event()
    codes: dict[str, int] = {}
    lock = threading.Lock()

    def frames():
        while not stop.is_set():
            yield image

    def stream() -> None:
        with Client(d.address, timeout=60) as c:
            for item in c.stream("faces", frames()):
                key = item.code if isinstance(item, StreamError) else "OK"
                with lock:
                    codes[key] = codes.get(key, 0) + 1

    try:
        d.wait_serving()
        threads = [threading.Thread(target=stream, daemon=True) for _ in range(24)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        t0 = time.monotonic()
        time.sleep(6.0)
        t1 = time.monotonic()
        stop.set()
        for t in threads:
            t.join(30)
        d.signal(signal.SIGTERM)
        assert d.wait(30) == 0, d.log_text()
    finally:
        stop.set()
        d.kill()
    assert codes.get("RESOURCE_EXHAUSTED", 0) > 0 and codes.get("OK", 0) > 0, codes
    pings = notify.times_of("WATCHDOG", since=t0 - watchdog_s / 2, until=t1)
    gaps = np.diff([t0] + pings + [t1])
    print(f"watchdog gaps max {max(gaps):.2f} s, {len(pings)} pings, answers {codes}")
    assert max(gaps) < watchdog_s / 2, (max(gaps), codes)


_STUCK_SERVE = '''
import os, sys, threading, time
from edgeinfer.runtime.onnxruntime.runner import OnnxRuntimeRunner

release = sys.argv.pop(1)  # while this file exists, a request whose x[0, 0] is -1 hangs in the runtime
infer = OnnxRuntimeRunner.infer

def hanging_infer(self, feeds):
    x = feeds.get("x")
    if x is not None and x.size and x.flat[0] == -1:
        while os.path.exists(release):
            time.sleep(0.01)
    return infer(self, feeds)

OnnxRuntimeRunner.infer = hanging_infer
from edgeinfer.cli import main
sys.exit(main())
'''


@pytest.mark.slow
def test_a_stuck_inference_stops_the_watchdog(notify, trivial_onnx, tmp_path):
    config = tmp_path / "edgeinfer.toml"
    # inline_max_us = 0: the request runs on a worker thread, as an image model's would.
    _trivial_config(config, tmp_path / "cache", [("trivial", "1", trivial_onnx, 1)],
                    server="watchdog_stall_s = 1.0\ninline_max_us = 0")
    script = tmp_path / "stuck_serve.py"
    script.write_text(_STUCK_SERVE)
    release = tmp_path / "hang"
    release.touch()
    d = ServeProcess(config, tmp_path / "serve.log", script=script, script_args=(str(release),),
                     env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"})
    try:
        d.wait_serving()
        notify.wait_for(lambda f: f.get("WATCHDOG") == "1", what="WATCHDOG=1")
        hung = threading.Thread(target=lambda: Client(d.address, timeout=60).infer(
            "trivial", tensors={"x": np.full((1, 64), -1, np.float32)}), daemon=True)
        t_stuck = time.monotonic()
        hung.start()
        # Other requests still answer meanwhile (the pool has more workers)...
        with Client(d.address, timeout=10) as c:
            assert c.infer("trivial", tensors={"x": X}).outputs["y"][0, 1] == 2.0
        # ...but past watchdog_stall_s the pings stop, and STATUS says why.
        t_stalled, _ = notify.wait_for(lambda f: "STALLED" in f.get("STATUS", ""), after=t_stuck, timeout=5,
                                       what="STATUS STALLED")
        assert t_stalled - t_stuck > 1.0  # not before the bound
        assert notify.times_of("WATCHDOG", since=t_stuck, until=t_stalled)  # fed until then
        time.sleep(2.0)  # four ticks, two WatchdogSec: no ping
        assert notify.times_of("WATCHDOG", since=t_stalled, until=time.monotonic()) == []
        release.unlink()
        hung.join(10)
        t_free = time.monotonic()
        notify.wait_for(lambda f: f.get("WATCHDOG") == "1", after=t_free, timeout=3, what="WATCHDOG=1 again")
        d.signal(signal.SIGTERM)
        assert d.wait(30) == 0
    finally:
        if release.exists():
            release.unlink()
        d.kill()
    assert "inference stalled: model trivial: a request has been running for" in d.log_text()


@pytest.mark.slow
def test_several_processes_reload_together_on_sighup_to_the_supervisor(notify, trivial_onnx, tmp_path):
    config = tmp_path / "edgeinfer.toml"
    cache = tmp_path / "cache"
    _trivial_config(config, cache, [("m", "1", trivial_onnx, 1)], server="processes = 2\ngrace_period_s = 1.0")
    d = ServeProcess(config, tmp_path / "serve.log", env={"NOTIFY_SOCKET": notify.path})
    try:
        t_ready, _ = notify.wait_for(lambda f: f.get("READY") == "1", timeout=60, what="READY=1")
        d.wait_serving()
        with Client(d.address, timeout=10) as c:
            with pytest.raises(ClientError) as info:
                c.reload()  # one process alone would serve another config than its sibling
        assert info.value.code == "FAILED_PRECONDITION" and "SIGHUP to the supervisor" in str(info.value)

        _trivial_config(config, cache, [("m", "2", trivial_onnx, 1)], server="processes = 2\ngrace_period_s = 1.0")
        t_hup = time.monotonic()
        d.signal(signal.SIGHUP)
        t_rel, fields = notify.wait_for(lambda f: f.get("RELOADING") == "1", after=t_hup, what="RELOADING=1")
        assert int(fields["MONOTONIC_USEC"]) >= int(t_hup * 1e6) - 1_000_000
        notify.wait_for(lambda f: f.get("READY") == "1", after=t_rel, timeout=60, what="READY=1 after the reload")
        # Each new channel may reach either process: all answer with the new version.
        for _ in range(8):
            with Client(d.address, timeout=10) as c:
                assert c.infer("m", tensors={"x": X}).model_version == "2"
        d.signal(signal.SIGTERM)
        assert d.wait(60) == 0, d.log_text()
    finally:
        d.kill()
    assert d.log_text().count("reload: model m updated (version 1 -> 2)") == 2
