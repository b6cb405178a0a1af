"""Serve a pickled edgeinfer Config with whichever edgeinfer PYTHONPATH names: an older tree's.

gpu_bench.py --old-tree runs this with PYTHONPATH=OLD/daemon:OLD/clients:..., so the
daemon (and, through multiprocessing's spawn, every process of it) runs the old code
while the bench, its clients and the ceiling run the new. It prints "PORT PID" once every
model has loaded, then serves until SIGTERM or SIGINT. Why: an interleaved bench of old
code against new in one call, where run_ab.sh can only alternate whole runs.
"""
import pickle
import signal
import sys
import threading

from edgeinfer.bench.daemon_proc import DaemonProcess


def main() -> None:
    with open(sys.argv[1], "rb") as f:
        config = pickle.load(f)
    stop = threading.Event()
    # Handlers, not a blocked mask: the daemon's spawned processes would inherit the mask.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with DaemonProcess(config, loop=sys.argv[2]) as daemon:
        print(daemon.port, daemon.pid, flush=True)
        while not stop.wait(0.5):
            pass


if __name__ == "__main__":
    main()
