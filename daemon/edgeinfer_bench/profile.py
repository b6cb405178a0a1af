"""Where the daemon's CPU goes during a point: py-spy samples of the daemon process, summarized.

Optional (`edgeinfer bench --profile`, needs `pip install py-spy` and ptrace
rights). Two sources, because neither alone is right:

- CPU time per thread comes from /proc/<pid>/task/<tid>/stat over the window:
  exact, but nameless (and native threads such as ONNX Runtime's pool count too);
- names and stacks come from py-spy, sampling every Python thread's stack at a
  fixed rate without stopping the process. py-spy's idle detection is loose in
  --nonblocking mode (a thread blocked in C, e.g. a queue wait, can look busy),
  so frames that only wait are dropped from its lists (`_WAITING`).

Frames inside compiled code (grpc's Cython, ONNX Runtime, OpenCV) show as the
Python frame that called them.
"""
from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Optional

RATE_HZ = 200
# Leaf frames that mean "blocked, waiting": not CPU, whatever py-spy says.
_WAITING = {"_worker", "Thread.run", "Connection._recv", "EpollSelector.select", "Condition.wait", "Event.wait",
            "Thread.join", "_wait_for_tstate_lock", "Queue.get", "SimpleQueue.get", "Semaphore.acquire"}
# Frames every thread has under it: left out of the inclusive list.
_GENERIC = {"<module>", "spawn_main", "_main", "BaseProcess._bootstrap", "BaseProcess.run", "run", "Runner.run",
            "BaseEventLoop.run_until_complete", "BaseEventLoop.run_forever", "BaseEventLoop._run_once",
            "Thread._bootstrap", "Thread._bootstrap_inner", "Thread.run", "_worker", "Handle._run"}


def available() -> Optional[str]:
    """Path of the py-spy executable (on PATH or beside this Python), or None."""
    for candidate in (shutil.which("py-spy"), os.path.join(sys.prefix, "bin", "py-spy")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


class Sampler:
    """Samples `pid` for `seconds` with py-spy in the background.

    Example:
        sampler = Sampler(daemon_pid, 6)
        sampler.start(delay=1.0)   # after the warm-up
        ...                        # the load runs
        summary = sampler.wait()   # None without py-spy; {"error": ...} when it could not attach
    """

    def __init__(self, pid: int, seconds: float):
        self.pid = pid
        self.seconds = max(1, int(round(seconds)))
        self._proc: Optional[subprocess.Popen] = None
        self._timers: list[threading.Timer] = []
        self._cpu0: dict[int, int] = {}
        self._cpu1: dict[int, int] = {}
        self._out = Path(tempfile.mkdtemp(prefix="edgeinfer-pyspy-")) / "raw.txt"

    def start(self, delay: float = 0.0) -> None:
        exe = available()
        if exe is None:
            return

        def launch() -> None:
            self._cpu0 = thread_cpu_ticks(self.pid)
            self._proc = subprocess.Popen(
                [exe, "record", "--pid", str(self.pid), "--rate", str(RATE_HZ), "--duration", str(self.seconds),
                 "--format", "raw", "--output", str(self._out), "--threads", "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def finish() -> None:
            self._cpu1 = thread_cpu_ticks(self.pid)

        self._timers = [threading.Timer(delay, launch), threading.Timer(delay + self.seconds, finish)]
        for t in self._timers:
            t.start()

    def wait(self) -> Optional[dict]:
        if not self._timers:
            return None
        for t in self._timers:
            t.join()
        if self._proc is None:
            return None
        try:
            _, err = self._proc.communicate(timeout=self.seconds + 30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            return {"error": "py-spy did not finish"}
        if not self._out.exists():
            return {"error": (err or b"").decode(errors="replace").strip()[-300:] or "py-spy wrote nothing"}
        summary = summarize_raw(self._out.read_text(), RATE_HZ, self.seconds)
        summary["threads"] = thread_busy(self._cpu0, self._cpu1, self.seconds, summary.pop("names"))
        return summary


def thread_stats(pid: int) -> dict[int, tuple[str, int]]:
    """(the OS's name, utime + stime in clock ticks) of every thread of `pid`, by thread id."""
    out = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2:].split()
        out[int(task.name)] = (stat[stat.find("(") + 1:stat.rfind(")")], int(rest[11]) + int(rest[12]))
    return out


def thread_cpu_ticks(pid: int) -> dict[int, int]:
    """utime + stime (clock ticks) of every thread of `pid`, by thread id."""
    return {tid: ticks for tid, (_name, ticks) in thread_stats(pid).items()}


def thread_busy(before: dict[int, int], after: dict[int, int], seconds: float,
                names: dict[int, str]) -> list[tuple[str, float]]:
    """Cores kept busy per named thread group over the window; unnamed (native) threads grouped as one."""
    ticks = os.sysconf("SC_CLK_TCK")
    groups: collections.Counter = collections.Counter()
    for tid, t1 in after.items():
        if tid not in before:
            continue  # started inside the window (e.g. a new worker): left out
        groups[names.get(tid, "native threads (no Python frame)")] += t1 - before[tid]
    return [(name, round(v / ticks / seconds, 3)) for name, v in groups.most_common(10) if v > 0]


def summarize_raw(text: str, rate_hz: float, seconds: float, top: int = 8) -> dict:
    """Summarize py-spy's raw (collapsed) output: busy share per thread, hottest frames overall.

    Returns:
        {"names": {tid: thread group}, "self": [(frame, share)], "inclusive": [(frame, share)]},
        shares of one core over the sampled time, frames that only wait left out.
    """
    names: dict[int, str] = {}
    self_time: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    for line in text.splitlines():
        line = line.strip()
        if not line or " " not in line:
            continue
        stack, count = line.rsplit(" ", 1)
        try:
            n = int(count)
        except ValueError:
            continue
        frames = stack.split(";")
        thread = frames[0]
        # "thread (1234): infer_0" -> tid 1234, group "infer": a pool's threads are one row.
        head, _, label = thread.partition(":")
        tid = head.strip().removeprefix("thread (").removesuffix(")")
        name = label.strip().rstrip("0123456789").rstrip("_") or thread
        if tid.isdigit():
            names[int(tid)] = name
        calls = [f.split(" (")[0] for f in frames[1:]]
        if not calls or calls[-1] in _WAITING:
            continue
        self_time[calls[-1]] += n
        for fn in set(calls):
            inclusive[fn] += n
    total = rate_hz * seconds

    def shares(counter: collections.Counter, k: int) -> list[tuple[str, float]]:
        return [(name, round(c / total, 3)) for name, c in counter.most_common(k)]

    return {"names": names, "self": shares(self_time, top),
            "inclusive": [x for x in shares(inclusive, top + len(_GENERIC)) if x[0] not in _GENERIC][:top]}
