"""Ratios between targets measured in the same run, and the pass/miss of the stated targets.

Every ratio is a throughput ratio of two points of the same run (same model,
same mode, same concurrency), so machine drift between runs cancels out.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Iterable, Optional

from edgeinfer_bench.stats import ratio

TRIVIAL = "trivial"


def _find(points: Iterable[dict], **where) -> Optional[dict]:
    best = None
    for p in points:
        if all(p.get(k) == v for k, v in where.items()):
            # Several ceilings (batch 1, batch 8...): the best one is the ceiling.
            if best is None or p["throughput"] > best["throughput"]:
                best = p
    return best


def compute_ratios(run: dict, echo_points: list[dict]) -> list[dict]:
    """daemon/ceiling, daemon/echo and stream/unary for every point of `run` that has a partner."""
    out = []
    daemon = [p for p in run["points"] if p["target"] == "daemon"]
    ceilings = [p for p in run["points"] if p["target"] == "ceiling"]
    for d in daemon:
        base = dict(run=run["label"], model=d["model"], mode=d["mode"], concurrency=d["concurrency"])
        # The ceiling keeps as many images in flight as the clients do: c unary clients, or c
        # streams x their window (a stream point with window 1 is c clients of the stream API).
        # An interleaved round pairs each daemon point with the ceiling measured next to it.
        paired = {"pair": d["pair"]} if "pair" in d else {}
        c = _find(ceilings, model=d["model"], concurrency=d.get("in_flight", d["concurrency"]), **paired)
        if c is not None:
            out.append(dict(base, name="daemon/ceiling", value=ratio(d["throughput"], c["throughput"]),
                            numerator=d["throughput"], denominator=c["throughput"],
                            latency_p50_ratio=ratio(d["p50_ms"], c["p50_ms"])))
        if d["mode"] == "unary":
            s = _find(daemon, model=d["model"], mode="stream", concurrency=d["concurrency"])
            if s is not None:
                out.append(dict(base, name="stream/unary", mode="stream", value=ratio(s["throughput"], d["throughput"]),
                                numerator=s["throughput"], denominator=d["throughput"]))
        e = _find(echo_points, model=d["model"], mode=d["mode"], concurrency=d["concurrency"])
        if e is not None:
            out.append(dict(base, name="daemon/echo", value=ratio(d["throughput"], e["throughput"]),
                            numerator=d["throughput"], denominator=e["throughput"],
                            latency_p50_ratio=ratio(d["p50_ms"], e["p50_ms"])))
    return out


@dataclass
class Target:
    """A stated goal on one ratio: `name` of ratio >= threshold for model/mode/concurrency."""

    title: str
    ratio: str
    model: str
    mode: str
    concurrency: int
    threshold: float


@dataclass
class TargetResult:
    title: str
    ratio: str
    threshold: float
    value: Optional[float]
    passed: Optional[bool]  # None: not measured in this run
    run: str
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


def cpu_targets(run: dict, concurrency: int = 8) -> list[Target]:
    """The issue's CPU goals, for the models this run served.

    - every image model at concurrency 8: daemon >= 90% of the in-process ceiling
    - the trivial model, unary at concurrency 1 and 8: within 15% of the bare echo
    - the trivial model: InferStream >= 3x unary at concurrency 1
    """
    targets = []
    for name in run["models"]:
        if name == TRIVIAL:
            continue
        targets.append(Target(f"{name}: daemon >= 90% of in-process ceiling (unary, c={concurrency})",
                              "daemon/ceiling", name, "unary", concurrency, 0.90))
    if TRIVIAL in run["models"]:
        for c in (1, 8):
            targets.append(Target(f"{TRIVIAL}: unary within 15% of bare echo (c={c})",
                                  "daemon/echo", TRIVIAL, "unary", c, 0.85))
        targets.append(Target(f"{TRIVIAL}: InferStream >= 3x unary (c=1)", "stream/unary", TRIVIAL, "stream", 1, 3.0))
    return targets


def evaluate(targets: list[Target], ratios: list[dict], run_label: str) -> list[TargetResult]:
    out = []
    for t in targets:
        r = next((x for x in ratios if x["run"] == run_label and x["name"] == t.ratio and x["model"] == t.model
                  and x["mode"] == t.mode and x["concurrency"] == t.concurrency), None)
        if r is None or r["value"] is None:
            out.append(TargetResult(t.title, t.ratio, t.threshold, None, None, run_label,
                                    "not measured in this run"))
            continue
        detail = f"{r['numerator']:.1f} / {r['denominator']:.1f} per s"
        out.append(TargetResult(t.title, t.ratio, t.threshold, r["value"], r["value"] >= t.threshold,
                                run_label, detail))
    return out


def base_label(run_label: str) -> str:
    """The run's label without its round suffix ("dev#2" -> "dev")."""
    return run_label.rsplit("#", 1)[0] if "#" in run_label else run_label


def median_interval(values: list[float], confidence: float = 0.90) -> tuple[float, float, float]:
    """A distribution-free interval for the median of `values`: (low, high, its coverage).

    The k-th smallest and k-th largest values bracket the true median with probability
    1 - 2 * P(Binomial(n, 1/2) < k); k is the largest that still covers `confidence`.
    With too few values for that (n < 5 at 90%), min and max, with their own coverage.
    """
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        raise ValueError("no values")

    def coverage(k: int) -> float:
        below = sum(math.comb(n, i) for i in range(k)) / 2 ** n
        return 1.0 - 2.0 * below

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= confidence:
        k += 1
    return xs[k - 1], xs[n - k], coverage(k)


def median_targets(targets: list[dict], rounds: int) -> list[dict]:
    """One verdict per run and target over its rounds: the median ratio against the goal.

    `targets`: TargetResult dicts of every round (run labels "<label>#<round>"). Each verdict
    also carries a ~90% interval for the median (median_interval): a verdict whose interval
    straddles the goal is not settled by this many rounds.
    """
    groups: dict[tuple[str, str], list[dict]] = {}
    for t in targets:
        groups.setdefault((base_label(t["run"]), t["title"]), []).append(t)
    out = []
    for (run, title), ts in groups.items():
        values = [t["value"] for t in ts if t["value"] is not None]
        median = float(statistics.median(values)) if values else None
        low, high, cover = median_interval(values) if values else (None, None, None)
        out.append(dict(run=run, title=title, threshold=ts[0]["threshold"], values=values, rounds=rounds,
                        median=median, passed=None if median is None else median >= ts[0]["threshold"],
                        passed_rounds=sum(v >= ts[0]["threshold"] for v in values),
                        interval=None if low is None else [low, high], interval_coverage=cover))
    return out


def paired_differences(targets: list[dict]) -> list[dict]:
    """Each run against the first, round by round: an A/B from the same rounds.

    `targets`: TargetResult dicts of every round. For every target and every run after
    the first, the differences of their ratios in the same round (run minus first), the
    median difference with its interval (median_interval) and the rounds the run won.
    Meaningful for interleaved rounds, where each round's runs were measured seconds apart.
    """
    by_run: dict[str, dict[tuple[str, str], float]] = {}
    order: list[str] = []
    for t in targets:
        if t["value"] is None or "#" not in t["run"]:
            continue
        run, rnd = base_label(t["run"]), t["run"].rsplit("#", 1)[1]
        if run not in by_run:
            order.append(run)
        by_run.setdefault(run, {})[(t["title"], rnd)] = t["value"]
    out = []
    if len(order) < 2:
        return out
    first = by_run[order[0]]
    titles = list(dict.fromkeys(title for title, _ in first))
    for run in order[1:]:
        for title in titles:
            diffs = [by_run[run][(title, rnd)] - v for (t, rnd), v in first.items()
                     if t == title and (title, rnd) in by_run[run]]
            if not diffs:
                continue
            low, high, cover = median_interval(diffs)
            out.append(dict(run=run, against=order[0], title=title, differences=diffs,
                            median=float(statistics.median(diffs)), interval=[low, high],
                            interval_coverage=cover, wins=sum(d > 0 for d in diffs)))
    return out
