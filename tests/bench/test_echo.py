"""The bare echo server answers with the size it was last given, unary and streaming."""
from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from edgeinfer_bench.echo import STREAM, UNARY, EchoServer
from edgeinfer_bench.loadgen import LoadSpec, run_load


@pytest.fixture(scope="module")
def echo():
    with EchoServer() as server:
        yield server


def test_unary_and_stream_answer_with_the_requested_size(echo):
    with grpc.insecure_channel(echo.address) as ch:
        echo.respond_with(123)
        assert ch.unary_unary(UNARY)(b"hello", timeout=10) == bytes(123)
        echo.respond_with(7)
        replies = list(ch.stream_stream(STREAM)(iter([b"a", b"b", b"c"]), timeout=10))
        assert replies == [bytes(7)] * 3
        with pytest.raises(RuntimeError, match="refused answer size 1073741824"):
            echo.respond_with(1 << 30)
        assert ch.unary_unary(UNARY)(b"", timeout=10) == bytes(7)  # a refused size changes nothing
        with pytest.raises(grpc.RpcError) as info:
            ch.unary_unary("/edgeinfer_bench.Echo/Nope")(b"x", timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_load_generator_measures_the_echo_server(echo):
    echo.respond_with(64)
    spec = LoadSpec(echo.address, UNARY, "unary", [b"x" * 300], concurrency=2,
                    duration_s=0.6, warmup_s=0.2, label="echo test")
    res = run_load(spec, progress=None)
    assert res.summary.errors == 0 and res.summary.count > 20
    assert res.response_bytes == 64 and res.request_bytes == 300
    assert 0 < res.summary.p50_ms < 200
    echo.respond_with(32)
    spec = LoadSpec(echo.address, STREAM, "stream", [b"y" * 10], concurrency=1,
                    duration_s=0.6, warmup_s=0.2, stream_window=4, label="echo stream test")
    res = run_load(spec, progress=None)
    assert res.summary.errors == 0 and res.summary.count > 20 and res.response_bytes == 32


def test_load_generator_reports_an_unreachable_target():
    spec = LoadSpec("127.0.0.1:1", UNARY, "unary", [b"x"], concurrency=1, duration_s=0.2,
                    warmup_s=0.0, label="nowhere", connect_timeout_s=1)
    with pytest.raises(RuntimeError, match="nowhere: client process failed"):
        run_load(spec, progress=None)


def test_load_clients_stay_connected_and_measure_slice_after_slice(echo):
    """The interleaved bench keeps one set of clients open and alternates short slices with the ceiling."""
    from edgeinfer_bench.loadgen import LoadClients

    echo.respond_with(16)
    for mode, method in (("unary", UNARY), ("stream", STREAM)):
        spec = LoadSpec(echo.address, method, mode, [b"z" * 40], concurrency=3, processes=2,
                        duration_s=0.3, warmup_s=0.1, stream_window=2, label=f"slices {mode}")
        with LoadClients(spec) as clients:
            procs = list(clients._procs)
            pids = [p.pid for p in procs]
            first = clients.run_slice(progress=None)
            second = clients.run_slice(warmup_s=0.0, duration_s=0.6, progress=None)
            assert [p.pid for p in clients._procs] == pids and all(p.is_alive() for p in clients._procs)
        assert first.processes == second.processes == 2
        for res in (first, second):
            assert res.summary.errors == 0 and res.summary.count > 10, mode
        # each slice's rate is over its own window
        assert second.summary.duration_s == pytest.approx(0.6)
        assert second.summary.throughput == pytest.approx(second.summary.count / 0.6)
        assert len(second.latencies_s) == second.summary.count
        assert not any(p.is_alive() for p in procs)  # "stop" ended them


def _connections_to(port: int) -> int:
    """Established TCP connections whose far end is 127.0.0.1:`port` (the client sides)."""
    tables = [Path(f) for f in ("/proc/net/tcp", "/proc/net/tcp6") if Path(f).exists()]  # v4 or v4-mapped
    lines = [line for t in tables for line in t.read_text().splitlines()[1:]]
    return sum(1 for line in lines if line.split()[2].endswith(f":{port:04X}") and line.split()[3] == "01")


@pytest.mark.parametrize("channels, connections", [("process", 2), ("slot", 5)])
def test_clients_share_their_process_connection_or_open_one_each(echo, channels, connections):
    """channels "slot": every client has its own HTTP/2 connection, as separate client programs would,
    however few processes carry them; "process": the clients of a process share one."""
    from edgeinfer_bench.loadgen import LoadClients

    before = _connections_to(echo.port)
    spec = LoadSpec(echo.address, UNARY, "unary", [b"x" * 300], concurrency=5, processes=2,
                    duration_s=0.4, warmup_s=0.1, label="layout", channels=channels)
    with LoadClients(spec) as clients:
        assert _connections_to(echo.port) - before == connections
        res = clients.run_slice(progress=None)
    assert res.summary.errors == 0 and res.summary.count > 10 and res.processes == 2
    with pytest.raises(ValueError, match="channels must be one of"):
        LoadSpec(echo.address, UNARY, "unary", [b"x"], 1, 1.0, channels="thread")


def test_several_echo_processes_share_one_port_and_one_answer_size():
    import os
    import signal

    with EchoServer(processes=2) as echo:
        assert len(set(echo.pids)) == 2
        echo.respond_with(40)
        for _ in range(6):  # a new connection each: the kernel spreads them over both processes
            with grpc.insecure_channel(echo.address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                assert ch.unary_unary(UNARY)(b"x", timeout=10) == bytes(40)
        os.kill(echo.pids[0], signal.SIGKILL)  # the second one alone still answers on the port
        with grpc.insecure_channel(echo.address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            assert ch.unary_unary(UNARY)(b"x", timeout=10, wait_for_ready=True) == bytes(40)
