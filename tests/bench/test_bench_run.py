"""A short real benchmark against a real in-process daemon: JSON, Markdown and PNGs with the expected fields."""
from __future__ import annotations

import copy
import json

import pytest

from edgeinfer_bench import report
from edgeinfer_bench.session import BenchSettings, RunSpec, run_benchmark
from edgeinfer_bench.trivial import build_trivial_onnx, trivial_model_config


def _trivial_config(dev_config, tmp_path):
    """The dev config serving only the trivial model, with its cache under tmp_path."""
    cfg = copy.deepcopy(dev_config)
    cfg.cache.dir = str(tmp_path / "cache")
    cfg.models = [trivial_model_config(build_trivial_onnx(tmp_path / "trivial.onnx"))]
    return cfg


@pytest.fixture(scope="module")
def bench_results(dev_config, media, start_daemon, tmp_path_factory):
    work = tmp_path_factory.mktemp("bench")
    cfg = copy.deepcopy(dev_config)
    cfg.cache.dir = str(work / "cache")
    cfg.models = [m for m in cfg.models if m.name == "imagenet"]
    cfg.models.append(trivial_model_config(build_trivial_onnx(work / "trivial.onnx")))
    daemon = start_daemon(cfg)
    lines: list[str] = []
    settings = BenchSettings(runs=[RunSpec("test", config=cfg, address=daemon.address)], images=media,
                             concurrency=[2], modes=["unary", "stream"], duration_s=1.0, warmup_s=0.2,
                             echo_concurrency=[2], stream_window=4, work_dir=work)
    results = run_benchmark(settings, progress=lines.append)
    paths = report.write_report(results, work / "out", "run")
    return results, paths, lines


@pytest.mark.slow
def test_every_target_was_measured_without_errors(bench_results):
    results, _, lines = bench_results
    points = results["runs"][0]["points"] + results["echo"]
    kinds = {(p["target"], p["model"], p["mode"]) for p in points}
    for model in ("imagenet", "trivial"):
        assert {("daemon", model, "unary"), ("daemon", model, "stream"), ("ceiling", model, "in-process, 2 threads"),
                ("echo", model, "unary"), ("echo", model, "stream")} <= kinds
    for p in points:
        assert p["errors"] == 0, p
        assert p["count"] > 0 and p["p50_ms"] <= p["p95_ms"] <= p["p99_ms"], p
        assert p["steal_pct"] is not None and 0.0 <= p["steal_pct"] <= 100.0, p  # the hypervisor's share
    # the daemon's own timing fields were sampled from real responses
    trivial_unary = next(p for p in points
                         if p["target"] == "daemon" and p["model"] == "trivial" and p["mode"] == "unary")
    assert trivial_unary["server_timing_us"]["samples"] > 0
    # echo used the daemon's response size
    echo = next(p for p in points if p["target"] == "echo" and p["model"] == "trivial" and p["mode"] == "unary")
    assert echo["response_bytes"] == pytest.approx(trivial_unary["response_bytes"], abs=8)
    assert any("measuring" in line for line in lines), "no progress lines"


def test_ratios_and_targets_come_from_the_same_run(bench_results):
    results, _, _ = bench_results
    names = {(r["model"], r["name"]) for r in results["ratios"]}
    assert {("imagenet", "daemon/ceiling"), ("trivial", "daemon/echo"), ("trivial", "stream/unary")} <= names
    for r in results["ratios"]:
        assert r["value"] == pytest.approx(r["numerator"] / r["denominator"])
    # targets are at c=1/8; this run measured c=2 only, so each says so instead of guessing
    assert results["targets"] and all(t["passed"] is None for t in results["targets"])


def test_report_files_hold_machine_versions_and_config(bench_results):
    results, paths, _ = bench_results
    data = json.loads(paths["json"].read_text())
    env = data["environment"]
    assert env["machine"]["usable_cpus"] >= 1 and env["machine"]["cpu_model"]
    for pkg in ("grpcio", "protobuf", "numpy", "onnxruntime", "edgeinfer"):
        assert pkg in env["versions"], pkg
    assert env["git"]["head"] and env["git"]["state"] in ("clean", "dirty", "not a git checkout")
    assert data["runs"][0]["models"]["imagenet"]["config"]["input"]["size"] == [224, 224]
    md = paths["markdown"].read_text()
    for needle in ("## Targets", "## Ratios", "### imagenet", "### trivial", "daemon/ceiling", "grpcio",
                   "latency_vs_concurrency.png"):
        assert needle in md, needle
    for kind in ("latency", "throughput", "histogram"):
        png = paths[kind].read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 200_000


def test_bench_subcommand_is_registered():
    from edgeinfer.cli import build_parser

    args = build_parser().parse_args(["bench", "--config", "x.toml", "--concurrency", "1,8", "--mode", "unary,stream"])
    assert args.concurrency == [1, 8] and args.mode == ["unary", "stream"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--concurrency", "0"])


def test_loop_lists_and_stream_levels_parse():
    from edgeinfer.cli import build_parser

    args = build_parser().parse_args(["bench", "--config", "x.toml", "--loop", "asyncio,uvloop",
                                      "--stream-concurrency", "1,8"])
    assert args.loop == ["asyncio", "uvloop"] and args.stream_concurrency == [1, 8]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--loop", "trio"])


def test_batched_ceiling_counts_every_row(tmp_path):
    from edgeinfer_bench.ceiling import CeilingSpec, run_ceiling
    from edgeinfer_bench.workload import tensor_payload
    from edgeinfer.config import ServerConfig

    model = trivial_model_config(build_trivial_onnx(tmp_path / "t.onnx"))
    payload = tensor_payload(model.name, {"x": (1, 64)})
    spec = CeilingSpec(model=model, server=ServerConfig(), cache_dir=str(tmp_path), requests=payload.requests,
                       concurrency=[2, 7], duration_s=0.5, warmup_s=0.1, batch=3, label="t")
    device, points = run_ceiling(spec)
    assert device.startswith("onnxruntime/fp32") and len(points) == 2
    for p in points:
        assert p.batch == 3 and p.summary.errors == 0
        assert p.summary.count > 0 and p.summary.count % 3 == 0  # each batch counts its 3 rows
    # As many images in flight as the clients keep: 2 // 3 -> 1 thread (at least one), 7 // 3 -> 2.
    assert [(p.concurrency, p.threads) for p in points] == [(2, 1), (7, 2)]


def test_ceiling_thread_cap_stands_for_the_client_concurrency(tmp_path):
    from edgeinfer_bench.ceiling import CeilingSpec, run_ceiling
    from edgeinfer_bench.workload import tensor_payload
    from edgeinfer.config import ServerConfig

    model = trivial_model_config(build_trivial_onnx(tmp_path / "t.onnx"))
    payload = tensor_payload(model.name, {"x": (1, 64)})
    spec = CeilingSpec(model=model, server=ServerConfig(), cache_dir=str(tmp_path), requests=payload.requests,
                       concurrency=[3], duration_s=0.3, warmup_s=0.1, threads_cap=1, label="t")
    _, (point,) = run_ceiling(spec)
    assert point.concurrency == 3 and point.threads == 1 and point.summary.count > 0


def test_bench_starts_a_multi_process_daemon_and_counts_all_its_cores(tmp_path):
    """[server] processes = 2 under the bench: the supervisor's pid stands for the server (its tree)."""
    from edgeinfer_bench.daemon_proc import DaemonProcess
    from edgeinfer_bench.environment import WindowCpu
    from edgeinfer.config import Config, ServerConfig
    from edgeinfer_client import Client
    import numpy as np
    import time

    model = trivial_model_config(build_trivial_onnx(tmp_path / "t.onnx"))
    config = Config(server=ServerConfig(workers=1, processes=2), models=[model], source="test")
    config.cache.dir = str(tmp_path / "cache")
    with DaemonProcess(config) as d:
        assert d.model_states["trivial"][0] == "ready"
        meter = WindowCpu(d.pid)
        meter.start(0.0, 1.5)
        x = np.ones((1, 64), np.float32)
        end = time.monotonic() + 1.6
        while time.monotonic() < end:
            with Client(d.address, timeout=10) as c:  # new connections: both processes get some
                np.testing.assert_array_equal(c.infer("trivial", tensors={"x": x}).outputs["y"], x + 1)
        usage = meter.wait()
    assert usage["server_cores"] > 0.05, usage  # the children's CPU counts, not only the idle supervisor's


@pytest.mark.slow
def test_rounds_alternate_runs_and_judge_the_median(dev_config, media, start_daemon, tmp_path):
    import statistics

    cfg = _trivial_config(dev_config, tmp_path)
    daemon = start_daemon(cfg)
    lines: list[str] = []
    settings = BenchSettings(runs=[RunSpec("a", config=cfg, address=daemon.address),
                                   RunSpec("b", config=cfg, address=daemon.address)],
                             images=media, concurrency=[1], modes=["unary"], duration_s=0.4, warmup_s=0.1,
                             echo_concurrency=[1], ceiling=False, rounds=3, work_dir=tmp_path)
    results = run_benchmark(settings, progress=lines.append)
    # Round by round: a#1, b#1, a#2, b#2, a#3, b#3.
    assert [r["label"] for r in results["runs"]] == ["a#1", "b#1", "a#2", "b#2", "a#3", "b#3"]
    assert [line for line in lines if line.startswith("[bench] round")][:2] == [
        "[bench] round 1/3: a", "[bench] round 1/3: b"]
    medians = {(t["run"], t["title"]): t for t in results["median_targets"]}
    echo_c1 = medians[("a", "trivial: unary within 15% of bare echo (c=1)")]
    per_round = [t["value"] for t in results["targets"]
                 if t["run"].startswith("a#") and t["title"] == echo_c1["title"]]
    assert len(per_round) == 3 and echo_c1["values"] == per_round
    assert echo_c1["median"] == pytest.approx(statistics.median(per_round))
    assert echo_c1["passed"] == (echo_c1["median"] >= 0.85)
    assert echo_c1["passed_rounds"] == sum(v >= 0.85 for v in per_round)
    text = report.write_report(results, tmp_path / "out", "rounds", plots=False)["markdown"].read_text()
    assert "## Targets: median of 3 rounds" in text


@pytest.mark.slow
def test_batched_ceiling_tries_each_preprocessing_pool_and_labels_it(dev_config, media, tmp_path):
    """--ceiling-pools: one batched ceiling point per pool size, each saying its pool; ratios use the best."""
    from edgeinfer_bench.analysis import compute_ratios

    cfg = _trivial_config(dev_config, tmp_path)
    cfg.server.workers = 2
    settings = BenchSettings(runs=[RunSpec("p", config=cfg)], images=media, concurrency=[4], modes=["unary"],
                             duration_s=0.4, warmup_s=0.1, echo=False, ceiling_batches=[2], ceiling_pools=[1, 3],
                             ceiling_at_workers=False, work_dir=tmp_path)
    results = run_benchmark(settings, progress=lambda _line: None)
    run = results["runs"][0]
    ceilings = [p for p in run["points"] if p["target"] == "ceiling"]
    assert sorted(p["pool"] for p in ceilings if p["batch"] == 2) == [1, 3]
    assert {p["mode"] for p in ceilings if p["batch"] == 2} == {
        "in-process, 2 threads x batch 2, preprocessing on 1 threads",
        "in-process, 2 threads x batch 2, preprocessing on 3 threads"}
    best = max(p["throughput"] for p in ceilings)
    ratio = next(r for r in compute_ratios(run, []) if r["name"] == "daemon/ceiling")
    assert ratio["denominator"] == best


def test_default_ceiling_pools_include_one_thread_per_core(monkeypatch):
    """Unnamed pools: the config's workers and the machine's cores, so few workers cannot weaken the ceiling."""
    from edgeinfer_bench import session

    monkeypatch.setattr(session.os, "cpu_count", lambda: 16)
    assert session.default_ceiling_pools(5) == [5, 16]
    assert session.default_ceiling_pools(16) == [16]
    assert session.default_ceiling_pools(0) == [1, 16]


def test_default_ceiling_models_add_the_default_instance_count():
    """A config that allows fewer concurrent runtime calls than the default cannot weaken its own ceiling:
    the batched ceiling also tries the default (H100: 1 ORT instance, ceiling ~30% lower)."""
    from edgeinfer_bench import session
    from edgeinfer.config import ModelConfig

    one = ModelConfig(name="m", onnx="m.onnx")
    one.onnxruntime.instances = 1
    models = session.default_ceiling_models(one)
    assert [m.onnxruntime.instances for m in models] == [1, 2]
    assert models[0] is one and one.onnxruntime.instances == 1  # the config itself is not changed
    assert [m.tensorrt.instances for m in models] == [2, 2]
    four = ModelConfig(name="m", onnx="m.onnx")
    four.onnxruntime.instances = 4
    assert session.default_ceiling_models(four) == [four]  # more than the default: only as configured


def test_runs_share_a_ceiling_only_when_model_and_gpu_wait_mode_agree():
    """The ceiling process takes [server] cuda_sync from its run: a run that waits for the GPU
    differently needs a ceiling of its own (a blocking wait slowed the latency-bound ceiling)."""
    import dataclasses

    from edgeinfer_bench import session
    from edgeinfer.config import Config, ModelConfig, ServerConfig

    model = ModelConfig(name="m", onnx="m.onnx")
    auto = Config(models=[model])
    auto_too = Config(server=ServerConfig(workers=8), models=[dataclasses.replace(model)])
    block = Config(server=ServerConfig(cuda_sync="block"), models=[model])
    ceilings = session._Ceilings("m", None, None)

    def key(cfg):
        return ceilings.key(session._CeilingJob(cfg, cfg.model("m"), 8, None, 4, [32]))

    assert key(auto) == key(auto_too)
    assert key(block) != key(auto)
    assert key(block) == key(Config(server=ServerConfig(cuda_sync="block"), models=[model]))


@pytest.mark.slow
def test_interleaved_rounds_pair_each_daemon_slice_with_its_own_ceiling_and_echo(dev_config, media, start_daemon,
                                                                                 tmp_path):
    """--interleave: daemons, ceiling and echo stay loaded; each round of a point is a slice of each, back to
    back, odd rounds reversed; a ceiling job alike for two runs is measured once per round for both; ratios use
    the ceiling of the same round and point; the median comes with an interval."""
    from edgeinfer_bench.cli import summary_text

    cfg = _trivial_config(dev_config, tmp_path)
    daemon = start_daemon(cfg)
    lines: list[str] = []
    settings = BenchSettings(runs=[RunSpec("a", config=cfg, address=daemon.address),
                                   RunSpec("b", config=cfg, address=daemon.address)], images=media,
                             concurrency=[1], modes=["unary", "stream"], duration_s=0.3, warmup_s=0.1,
                             stream_window=2, echo_concurrency=[1], ceiling_batches=[1, 2], ceiling_pools=[1],
                             rounds=3, interleave=True, work_dir=tmp_path)
    results = run_benchmark(settings, progress=lines.append)
    assert [r["label"] for r in results["runs"]] == ["a#1", "b#1", "a#2", "b#2", "a#3", "b#3"]
    assert [line for line in lines if line.startswith("[bench] round")] == [
        f"[bench] round {k}/3: a, b trivial {pair}" for pair in ("unary c=1", "stream c=1") for k in (1, 2, 3)]
    measured = [line for line in lines if " ceiling trivial " in line or " daemon trivial unary" in line]
    # round 1: daemon a, daemon b, then each ceiling job once (both runs configure it alike)
    assert [line.split(":")[0].split()[1] for line in measured[:4]] == ["a", "b", "a#1", "a#1"]
    for k, run in enumerate(results["runs"]):
        rnd = k // 2
        unary = [p["target"] for p in run["points"] if p["pair"] == "unary c=1"]
        # batch 1 and batch 2 ceilings next to each daemon slice; odd rounds go the other way
        assert unary == (["daemon", "ceiling", "ceiling"] if rnd % 2 == 0 else ["ceiling", "ceiling", "daemon"])
        assert all(p["run"] == run["label"] for p in run["points"])
        stream_ceilings = [p for p in run["points"] if p["pair"] == "stream c=1" and p["target"] == "ceiling"]
        assert {p["concurrency"] for p in stream_ceilings} == {2}  # 1 stream x window 2 images in flight
        echoes = [p for p in results["echo"] if p["run"] == run["label"]]
        assert sorted(p["pair"] for p in echoes) == ["stream c=1", "unary c=1"]
        for p in run["points"] + echoes:
            assert p["errors"] == 0 and p["count"] > 0, p
        for p in echoes:  # one echo for all: each slice answers with its pair's daemon answer size
            answers = next(d for d in run["points"] if d["target"] == "daemon" and d["pair"] == p["pair"])
            assert p["response_bytes"] == pytest.approx(answers["response_bytes"], abs=8)
        for r in (r for r in results["ratios"] if r["run"] == run["label"] and r["name"] == "daemon/ceiling"):
            pair = f"{r['mode']} c={r['concurrency']}"
            best = max(p["throughput"] for p in run["points"] if p["target"] == "ceiling" and p["pair"] == pair)
            assert r["denominator"] == best
    a2, b2 = results["runs"][2], results["runs"][3]
    assert [p["throughput"] for p in a2["points"] if p["target"] == "ceiling"] == \
        [p["throughput"] for p in b2["points"] if p["target"] == "ceiling"]  # one measurement, both runs
    medians = {(t["run"], t["title"]): t for t in results["median_targets"]}
    echo_c1 = medians[("a", "trivial: unary within 15% of bare echo (c=1)")]
    assert len(echo_c1["values"]) == 3
    low, high = echo_c1["interval"]
    assert low == min(echo_c1["values"]) and high == max(echo_c1["values"])  # 3 rounds: min-max, 75%
    assert echo_c1["interval_coverage"] == pytest.approx(0.75)
    assert "interval" in summary_text(results)
    # b against a, round by round
    paired = next(d for d in results["paired"] if d["title"] == echo_c1["title"])
    b_values = medians[("b", echo_c1["title"])]["values"]
    assert paired["run"] == "b" and paired["against"] == "a"
    assert paired["differences"] == pytest.approx([vb - va for va, vb in zip(echo_c1["values"], b_values)])
    text = report.write_report(results, tmp_path / "out", "interleaved", plots=False)["markdown"].read_text()
    assert "interleaved point by point" in text and "(75%)" in text and "## Runs compared round by round" in text


def test_median_interval_brackets_the_median_with_order_statistics():
    from edgeinfer_bench.analysis import median_interval

    assert median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0, 0.75)
    low, high, cover = median_interval([float(v) for v in range(10)])
    assert (low, high) == (1.0, 8.0) and cover == pytest.approx(1 - 2 * 11 / 1024)
    # more rounds, a tighter interval at the same confidence
    low, high, cover = median_interval([float(v) for v in range(20)])
    assert (low, high) == (5.0, 14.0) and cover >= 0.90
    with pytest.raises(ValueError):
        median_interval([])


def test_paired_differences_compare_each_run_with_the_first_round_by_round():
    from edgeinfer_bench.analysis import paired_differences

    def t(run, value, title="x"):
        return {"run": run, "title": title, "value": value}

    targets = [t("a#1", 0.80), t("b#1", 0.70), t("c#1", 0.85),
               t("a#2", 0.90), t("b#2", 0.95), t("c#2", 0.86),
               t("a#3", 0.85), t("b#3", 0.75), t("c#3", None)]
    out = {d["run"]: d for d in paired_differences(targets)}
    assert set(out) == {"b", "c"} and out["b"]["against"] == "a"
    assert out["b"]["differences"] == pytest.approx([-0.10, 0.05, -0.10])
    assert out["b"]["median"] == pytest.approx(-0.10) and out["b"]["wins"] == 1
    assert out["c"]["differences"] == pytest.approx([0.05, -0.04])  # round 3 of c was not measured
    assert paired_differences([t("a#1", 0.8), t("a#2", 0.9)]) == []  # one run: nothing to compare


@pytest.mark.parametrize("argv, expected", [
    ([], False),                                  # one round: nothing to interleave
    (["--rounds", "3"], True),                    # rounds interleave by default
    (["--rounds", "3", "--no-interleave"], False),
    (["--interleave"], True),
])
def test_rounds_interleave_unless_told_otherwise(argv, expected):
    from edgeinfer_bench.cli import interleaved
    from edgeinfer.cli import build_parser

    args = build_parser().parse_args(["bench", "--config", "configs/dev.toml", *argv])
    assert interleaved(args) is expected
