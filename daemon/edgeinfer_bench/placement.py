"""Which CPUs the benchmark's processes run on: the load generator apart from the servers.

On one machine the load generator takes cores from the daemon it drives (1.5-1.9
cores for 32 JPEG clients on the H100 leases, while the in-process
ceiling has no clients at all. In deployment the clients are other machines.
A placement keeps the two apart: the client processes on some CPUs, the daemon,
its ceiling and the echo server on the others, the *same* set for all three, so
a ratio still compares like with like.

How: a process started by fork or spawn inherits the CPU mask of the thread
that starts it. So the bench narrows its own thread's mask while it starts a
child and restores it after (`started_on`); nothing in the children changes,
and a daemon's own children (front-ends, the shared inference process)
inherit the daemon's mask in turn.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterable, Iterator


def available_cpus() -> list[int]:
    """The CPUs this process may run on, ascending."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return list(range(os.cpu_count() or 1))


def parse_cpus(text: str) -> frozenset[int]:
    """A Linux CPU list ("0-2,5") as a set; every CPU must be one this process may use.

    Raises:
        ValueError: bad syntax, an empty list, or a CPU that is not available here.
    """
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi) if dash else int(lo)
        except ValueError:
            raise ValueError(f"bad CPU list {text!r}: expected e.g. 0-2,5") from None
        if first < 0 or last < first:
            raise ValueError(f"bad CPU range {part!r} in {text!r}")
        cpus.update(range(first, last + 1))
    missing = sorted(cpus - set(available_cpus()))
    if missing:
        raise ValueError(f"CPU(s) {format_cpus(missing)} not available here (this process may use "
                         f"{format_cpus(available_cpus())})")
    return frozenset(cpus)


def format_cpus(cpus: Iterable[int]) -> str:
    """The shortest CPU list for `cpus`: [0, 1, 2, 5] -> "0-2,5"."""
    out, run = [], []
    for c in sorted(set(cpus)):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


@dataclass(frozen=True)
class Placement:
    """CPUs of the servers (daemon, ceiling, echo) and of the load generator; empty = anywhere."""

    server: frozenset[int] = frozenset()
    clients: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        both = self.server & self.clients
        if both:
            raise ValueError(f"CPU(s) {format_cpus(both)} given to both the servers and the load generator: "
                             "a placement keeps them apart")

    @classmethod
    def clients_first(cls, n: int) -> "Placement":
        """The load generator on the first `n` available CPUs, the servers on the rest.

        Raises:
            ValueError: n < 1, or no CPU left for the servers.
        """
        cpus = available_cpus()
        if n < 1 or n >= len(cpus):
            raise ValueError(f"cannot give {n} of {len(cpus)} CPUs to the load generator and keep some "
                             "for the servers")
        return cls(server=frozenset(cpus[n:]), clients=frozenset(cpus[:n]))

    @property
    def pinned(self) -> bool:
        return bool(self.server or self.clients)

    def describe(self) -> dict:
        """For the results: each side's CPU list, "all" where unpinned."""
        return {"server": format_cpus(self.server) or "all", "clients": format_cpus(self.clients) or "all"}


ANYWHERE = Placement()


@contextlib.contextmanager
def started_on(cpus: frozenset[int]) -> Iterator[None]:
    """Processes started by this thread inside the block run on `cpus` (empty: no change)."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
