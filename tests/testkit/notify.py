"""A real sd_notify(3) receiver, and `edgeinfer serve` as systemd would start it (Type=notify)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parent.parent.parent


class NotifySocket:
    """An AF_UNIX datagram socket bound where NOTIFY_SOCKET points; records every message with its
    arrival time (time.monotonic) on a thread."""

    def __init__(self) -> None:
        # sun_path holds 108 bytes: a short folder, not pytest's tmp_path.
        self.dir = tempfile.mkdtemp(prefix="ei-notify-", dir="/tmp")
        self.path = os.path.join(self.dir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._read, name="notify-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def snapshot(self) -> list[tuple[float, dict[str, str]]]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, pred: Callable[[dict[str, str]], bool], timeout: float = 30.0, after: float = 0.0,
                 what: str = "message") -> tuple[float, dict[str, str]]:
        """The first message received after `after` (monotonic) for which pred holds."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for t, fields in self.snapshot():
                if t >= after and pred(fields):
                    return t, fields
            time.sleep(0.02)
        raise AssertionError(f"no {what} within {timeout} s; received: {[f for _t, f in self.snapshot()]}")

    def times_of(self, key: str, since: float = 0.0, until: float = float("inf")) -> list[float]:
        return [t for t, f in self.snapshot() if key in f and since <= t <= until]

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """`python -m edgeinfer.cli serve --config X` with this checkout's sources, its log in a file."""

    def __init__(self, config: Path, log: Path, env: Optional[dict] = None, script: Optional[Path] = None,
                 script_args: tuple[str, ...] = ()):
        """script: a Python file run instead of `-m edgeinfer.cli`, with `script_args` first and then the
        CLI's arguments."""
        self.address = f"127.0.0.1:{free_port()}"
        self.log = log
        self.config = config
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "daemon"), str(ROOT / "clients"),
                                                  full_env.get("PYTHONPATH", "")])
        for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
            full_env.pop(key, None)
        full_env.update(env or {})
        self.env = full_env
        self._fh = open(log, "w")
        entry = [str(script), *script_args] if script is not None else ["-m", "edgeinfer.cli"]
        self.proc = subprocess.Popen([sys.executable, *entry, "serve", "--config", str(config),
                                      "--listen", self.address], stdout=self._fh, stderr=subprocess.STDOUT,
                                     env=full_env)

    def log_text(self) -> str:
        return self.log.read_text()

    def wait_serving(self, timeout: float = 90.0) -> None:
        from edgeinfer_client import Client, ClientError

        end = time.monotonic() + timeout
        with Client(self.address, timeout=2) as c:
            while time.monotonic() < end:
                assert self.proc.poll() is None, self.log_text()
                try:
                    if c.health() == "SERVING":
                        return
                except ClientError:
                    pass
                time.sleep(0.1)
        raise AssertionError("daemon did not become SERVING:\n" + self.log_text())

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._fh.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._fh.close()
