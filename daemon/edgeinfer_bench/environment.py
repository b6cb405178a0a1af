"""What a benchmark ran on: machine, library versions, source state.

Numbers without this are not comparable; the report prints it all.
"""
from __future__ import annotations

import os
import platform as _pyplatform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Optional

from edgeinfer_bench.placement import available_cpus

# Distribution names whose versions matter for the numbers.
PACKAGES = ("edgeinfer", "grpcio", "protobuf", "numpy", "onnxruntime", "onnxruntime-gpu",
            "opencv-python-headless", "opencv-python", "onnx", "uvloop", "cuda-python", "cuda-bindings",
            "matplotlib")


def package_versions(names=PACKAGES) -> dict[str, str]:
    """Installed versions of `names` (absent ones left out)."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    if "edgeinfer" not in out:
        from edgeinfer import __version__

        out["edgeinfer"] = f"{__version__} (source tree)"
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return _pyplatform.processor() or "unknown"


def usable_cpus() -> int:
    return len(available_cpus())


def git_state(repo: Optional[Path] = None) -> dict[str, str]:
    """HEAD commit and whether the work tree differs from it (read-only git calls)."""
    repo = repo or Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=normal"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {"head": "unknown", "state": "not a git checkout"}
    changed = [line[3:] for line in status.splitlines() if line.strip()]
    return {"head": head, "state": "dirty" if changed else "clean",
            "changed": ", ".join(sorted(changed)[:40]) + (" ..." if len(changed) > 40 else "")}


def describe() -> dict:
    """Machine, versions and git state as one JSON-ready dict."""
    from edgeinfer import platform as plat

    info = plat.detect()
    return {
        "machine": {
            "arch": info.machine,
            "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(),
            "usable_cpus": usable_cpus(),
            "os": f"{_pyplatform.system()} {_pyplatform.release()}",
            "gpus": [f"{g.name} (cc {g.compute_capability}, {g.total_memory_mb} MiB)" for g in info.gpus],
            "nvidia_driver": info.nvidia_driver,
            "cuda_runtime": info.cuda_runtime,
            "onnxruntime_providers": info.onnxruntime_providers,
        },
        "python": _pyplatform.python_version(),
        "versions": package_versions(),
        "git": git_state(),
    }


# -- who else used the CPU ---------------------------------------------------------------

def _cpu_jiffies(stat: Path = Path("/proc/stat")) -> Optional[tuple[int, int]]:
    """All CPUs' time since boot, in clock ticks: (busy, stolen); None off Linux.

    busy = run by this machine's processes (user, nice, system, irq, softirq); stolen = time
    a virtual machine's CPUs were ready to run but the hypervisor ran something else. Steal
    is kept apart: it is no process here, and it slows whatever runs when it strikes (on
    H100 leases it reached ~10% of all cores and took the in-process ceiling
    from ~2,700 down to ~1,100 img/s in some slices).
    """
    try:
        fields = stat.read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    # user nice system idle iowait irq softirq steal guest guest_nice (guest time is inside user)
    v = [int(x) for x in fields[:8]] + [0] * max(0, 8 - len(fields))
    stolen = v[7]
    return sum(v) - v[3] - v[4] - stolen, stolen


def _proc_stats() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, CPU ticks with its reaped children) of every live process, from /proc."""
    stats: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2:].split()
        # utime stime cutime cstime are fields 14-17 (1-based), rest[11:15]
        stats[int(entry.name)] = (int(rest[1]), sum(int(x) for x in rest[11:15]))
    return stats


def descendants(root: int, stats: Optional[dict[int, tuple[int, int]]] = None) -> list[int]:
    """`root` and every live process below it (`stats`: a _proc_stats() already read)."""
    stats = _proc_stats() if stats is None else stats
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def _tree_jiffies(root: int) -> int:
    """CPU ticks of `root` (with its reaped children) and of its live descendants."""
    stats = _proc_stats()
    return sum(stats.get(pid, (0, 0))[1] for pid in descendants(root, stats))


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by process `root` and its descendants (from /proc)."""
    return _tree_jiffies(root) / os.sysconf("SC_CLK_TCK")


class CpuShare:
    """Share of the machine's CPU that processes outside this benchmark used meanwhile.

    Example:
        with CpuShare() as share:
            run_load(...)
        share.other_pct  # e.g. 38.0: others took 38% of all cores during the point

    Approximate (a child reaped in between is counted once through its parent);
    None where /proc is missing.
    """

    def __init__(self) -> None:
        self.other_pct: Optional[float] = None
        self.steal_pct: Optional[float] = None  # share of all cores' time the hypervisor took meanwhile

    def __enter__(self) -> "CpuShare":
        self._t0 = time.monotonic()
        self._cpu0 = _cpu_jiffies()
        self._ours0 = _tree_jiffies(os.getpid()) if self._cpu0 is not None else 0
        return self

    def __exit__(self, *exc) -> None:
        cpu1 = _cpu_jiffies()
        if self._cpu0 is None or cpu1 is None:
            return
        elapsed = time.monotonic() - self._t0
        ticks = os.sysconf("SC_CLK_TCK")
        capacity = elapsed * ticks * usable_cpus()
        if capacity <= 0:
            return
        others = (cpu1[0] - self._cpu0[0]) - (_tree_jiffies(os.getpid()) - self._ours0)
        self.other_pct = round(100.0 * max(0.0, others) / capacity, 1)
        self.steal_pct = round(100.0 * max(0, cpu1[1] - self._cpu0[1]) / capacity, 1)


class WindowCpu:
    """Where the machine's CPU went during a measured window: the server, the clients, everyone else.

    `start(delay, seconds)` snapshots at window start and end on timers (so the
    numbers cover the measured window only, not process start-up or drain);
    `wait()` returns {"server_cores", "client_cores", "others_pct", "steal_pct"}:
    cores used by the server process (all its threads), by the rest of this
    benchmark's process tree (load generators), the percentage of all cores used
    by processes outside the benchmark, and the percentage the hypervisor stole.
    """

    def __init__(self, server_pid: Optional[int]):
        self.server_pid = server_pid
        self._snaps: list[tuple[float, int, int, int]] = []
        self._timers: list = []

    def _snap(self) -> None:
        cpu = _cpu_jiffies()
        if cpu is None:
            return
        # The server's whole tree: a supervisor's daemon processes count as the server.
        self._snaps.append((time.monotonic(), cpu, _tree_jiffies(os.getpid()),
                            _tree_jiffies(self.server_pid) if self.server_pid else 0))

    def start(self, delay: float, seconds: float) -> None:
        import threading

        self._timers = [threading.Timer(delay, self._snap), threading.Timer(delay + seconds, self._snap)]
        for t in self._timers:
            t.start()

    def wait(self) -> dict:
        for t in self._timers:
            t.join()
        if len(self._snaps) != 2:
            return {}
        (t0, (b0, stolen0), tree0, s0), (t1, (b1, stolen1), tree1, s1) = self._snaps
        ticks = os.sysconf("SC_CLK_TCK") * (t1 - t0)
        # An external server (--address) is outside our tree: it lands in "others".
        in_tree = self.server_pid is not None and self._in_tree()
        server = (s1 - s0) / ticks if self.server_pid else None
        clients = ((tree1 - tree0) - ((s1 - s0) if in_tree else 0)) / ticks
        others = max(0.0, (b1 - b0) - (tree1 - tree0) - (0 if in_tree else (s1 - s0))) / ticks
        return {"server_cores": None if server is None else round(server, 2),
                "client_cores": round(clients, 2),
                "others_pct": round(100.0 * others / usable_cpus(), 1),
                "steal_pct": round(100.0 * max(0, stolen1 - stolen0) / ticks / usable_cpus(), 1)}

    def _in_tree(self) -> bool:
        pid = self.server_pid
        for _ in range(64):
            if pid == os.getpid():
                return True
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                return False
            pid = int(stat[stat.rfind(")") + 2:].split()[1])
            if pid <= 1:
                return False
        return False
