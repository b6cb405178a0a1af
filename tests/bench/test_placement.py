"""CPU placement of the benchmark's processes: the load generator on its CPUs, the servers on theirs.

Real processes throughout: the masks are read back from the kernel (os.sched_getaffinity
of the child's pid), and the placed benchmark runs a real daemon, ceiling, echo server and
load generator.
"""
from __future__ import annotations

import copy
import multiprocessing as mp
import os
from pathlib import Path

import pytest

from edgeinfer_bench import environment, report
from edgeinfer_bench.echo import UNARY, EchoServer
from edgeinfer_bench.loadgen import LoadClients, LoadSpec
from edgeinfer_bench.placement import ANYWHERE, Placement, available_cpus, format_cpus, parse_cpus, started_on
from edgeinfer_bench.session import BenchSettings, RunSpec, run_benchmark
from edgeinfer_bench.trivial import build_trivial_onnx, trivial_model_config

CPUS = available_cpus()
two_cpus = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs to keep two groups apart")


def _own_mask(q) -> None:
    q.put(sorted(os.sched_getaffinity(0)))


def test_cpu_lists_parse_and_print_in_linux_syntax():
    assert format_cpus([5, 0, 2, 1]) == "0-2,5"
    assert format_cpus([3]) == "3" and format_cpus([]) == ""
    assert parse_cpus(str(CPUS[0])) == {CPUS[0]}
    assert parse_cpus(format_cpus(CPUS)) == set(CPUS)
    for bad in ("", "a", "1-", "3-1", "-1"):
        with pytest.raises(ValueError, match="bad CPU"):
            parse_cpus(bad)
    with pytest.raises(ValueError, match=rf"CPU\(s\) {max(CPUS) + 1} not available here .*may use {format_cpus(CPUS)}"):
        parse_cpus(str(max(CPUS) + 1))


def test_a_placement_keeps_servers_and_clients_apart():
    with pytest.raises(ValueError, match="given to both"):
        Placement(server=frozenset({0, 1}), clients=frozenset({1}))
    assert not ANYWHERE.pinned and ANYWHERE.describe() == {"server": "all", "clients": "all"}
    with pytest.raises(ValueError, match="keep some for the servers"):
        Placement.clients_first(len(CPUS))
    with pytest.raises(ValueError):
        Placement.clients_first(0)
    if len(CPUS) >= 2:
        p = Placement.clients_first(1)
        assert p.clients == {CPUS[0]} and p.server == set(CPUS[1:]) and p.pinned
        assert p.describe() == {"server": format_cpus(CPUS[1:]), "clients": str(CPUS[0])}


@two_cpus
def test_a_process_started_inside_started_on_runs_there_and_the_starter_gets_its_mask_back():
    before = os.sched_getaffinity(0)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_own_mask, args=(q,))
    with started_on(frozenset({CPUS[-1]})):
        p.start()
    assert os.sched_getaffinity(0) == before
    assert q.get(timeout=60) == [CPUS[-1]]
    p.join(30)
    with started_on(frozenset()):  # empty: no change at all
        assert os.sched_getaffinity(0) == before


@two_cpus
def test_load_generator_and_echo_server_run_on_their_own_cpus_and_still_measure():
    server, clients = frozenset({CPUS[-1]}), frozenset({CPUS[0]})
    with EchoServer(cpus=server) as echo:
        assert os.sched_getaffinity(echo.pid) == server
        spec = LoadSpec(echo.address, UNARY, "unary", [b"x" * 300], concurrency=2, processes=2,
                        duration_s=0.5, warmup_s=0.1, label="placed", cpus=clients)
        with LoadClients(spec) as load:
            assert [os.sched_getaffinity(p.pid) for p in load._procs] == [clients, clients]
            res = load.run_slice(progress=None)
    assert res.summary.errors == 0 and res.summary.count > 10


def test_runs_share_a_ceiling_only_on_the_same_server_cpus():
    """A ceiling confined to fewer CPUs is a different ceiling: runs placed differently each get theirs."""
    from edgeinfer_bench import session
    from edgeinfer.config import Config, ModelConfig

    cfg = Config(models=[ModelConfig(name="m", onnx="m.onnx")])
    ceilings = session._Ceilings("m", None, None)

    def key(cpus):
        return ceilings.key(session._CeilingJob(cfg, cfg.model("m"), 8, None, 4, [32], cpus=cpus))

    assert key(frozenset()) == key(frozenset())
    assert key(frozenset({1})) != key(frozenset())
    assert key(frozenset({1})) == key(frozenset({1})) != key(frozenset({0}))


def _descendant_masks() -> dict[int, frozenset]:
    """Affinity of every multiprocessing child (any depth) of this process, by pid."""
    masks = {}
    for pid in environment.descendants(os.getpid())[1:]:
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                masks[pid] = frozenset(os.sched_getaffinity(pid))
        except OSError:
            continue
    return masks


@two_cpus
@pytest.mark.slow
def test_a_placed_benchmark_starts_daemon_ceiling_echo_and_clients_on_their_cpus(dev_config, media, tmp_path):
    """The bench starts each process on its side's CPUs, while it measures, and the report says where."""
    cfg = copy.deepcopy(dev_config)
    cfg.cache.dir = str(tmp_path / "cache")
    cfg.models = [trivial_model_config(build_trivial_onnx(tmp_path / "trivial.onnx"))]
    placement = Placement(server=frozenset(CPUS[1:]), clients=frozenset(CPUS[:1]))
    seen: list[set] = []

    def progress(line: str) -> None:
        if line.startswith("[bench] round"):  # every process of the point is up between slices
            seen.append(set(_descendant_masks().values()))

    settings = BenchSettings(runs=[RunSpec("placed", config=cfg, placement=placement)], images=media,
                             concurrency=[1], modes=["unary"], duration_s=0.3, warmup_s=0.1, echo_concurrency=[1],
                             rounds=2, interleave=True, work_dir=tmp_path, client_processes=1)
    results = run_benchmark(settings, progress=progress)
    assert seen and seen[-1] == {placement.server, placement.clients}
    assert all(p["errors"] == 0 for r in results["runs"] for p in r["points"])
    assert {p["target"] for r in results["runs"] for p in r["points"]} == {"daemon", "ceiling"}
    assert results["runs"][0]["cpus"] == {"server": format_cpus(CPUS[1:]), "clients": str(CPUS[0])}
    md = Path(report.write_report(results, tmp_path / "out", "placed", plots=False)["markdown"]).read_text()
    assert f"CPUs: daemon, ceiling and echo {format_cpus(CPUS[1:])}, load generator {CPUS[0]}" in md


def test_cli_takes_cpu_lists_and_refuses_overlap(capsys):
    from edgeinfer.cli import main

    assert main(["bench", "--config", "x.toml", "--client-cpus", "0", "--server-cpus", "0"]) == 2
    assert "given to both the servers and the load generator" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--config", "x.toml", "--client-cpus", "nope"])
    assert "bad CPU list" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--config", "x.toml", "--client-channels", "thread"])
    assert "invalid choice: 'thread'" in capsys.readouterr().err
