"""The inference host: loads every model once and runs the front-ends' batches.

One thread per front-end link reads its calls (blocking in recv, without the
GIL) and hands the rows to the model's Coalescer without waiting for them.
The slot thread that ran a call's last rows writes its outputs back into its
buffer and answers it on its link. An earlier design handed that to a
reply thread: one more thread wake-up on every call's way back, on a machine
whose cores are busy, where the write-back of a classifier's outputs and a
small message cost the slot tens of microseconds. H100, ResNet-50, 32 unary
clients, interleaved against the reply thread: +0.006 of the in-process
ceiling at the median of 32 paired rounds on a steady lease, ahead in 19, and
the front-end's host round trip 0.26-0.28 ms shorter in two calls of three
(docs/decisions.md). Models load
exactly as in a standalone daemon (`ModelRegistry`: fallback chain, accuracy
gate, GPU normalization, warm-up of every bucket); a front-end asking to
describe a model still loading waits for it.

The host holds no gRPC server. It reports to the supervisor like a front-end
does (ticks, "error"), serves its own metrics endpoint on the metrics port +
the number of front-ends, stops
on SIGTERM (the supervisor sends it after the front-ends have drained) and
on its own when the supervisor disappears.

Its metrics use the daemon's names with the host's meaning: a request is one
front-end call; latency stage queue = waiting for a free slot, inference =
its rows' runner call(s), postprocess = writing outputs back, total =
received to reply. The batch-size histogram counts the merged runner calls.
GPU memory and utilization, RSS as in any daemon.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from multiprocessing import reduction
from typing import Optional

import numpy as np

from edgeinfer.runtime.buckets import batch_buckets, effective_max_batch
from edgeinfer.serving.batching import elapsed_us
from edgeinfer.config import Config
from edgeinfer.process import signals
from edgeinfer.process.child import prepare_child
from edgeinfer.errors import ModelNotReady
from edgeinfer.observe.metrics import Metrics, MetricsEndpoint
from edgeinfer.model.served import ServedModel
from edgeinfer.model.types import ModelState
from edgeinfer.model.registry import ModelRegistry
from edgeinfer.rpc.errors import status_of
from edgeinfer.serving.shared.coalesce import Coalescer, Merged
from edgeinfer.serving.shared.wire import ModelDescription, SharedBuffer, bytes_needed, error_reply, shutdown_connection

log = logging.getLogger(__name__)


class _Link:
    """The host's end of one front-end's link: its connection and the buffers it was handed."""

    def __init__(self, conn):
        self.conn = conn
        self.buffers: dict[int, SharedBuffer] = {}
        self.send_lock = threading.Lock()  # slot threads and describe threads all answer

    def answer(self, call_id: int, reply: tuple) -> None:
        try:
            with self.send_lock:
                self.conn.send((call_id, reply))
        except (EOFError, OSError):  # the front-end is gone; its reader thread ends the link
            pass

    def close(self) -> None:
        self.conn.close()
        for b in self.buffers.values():
            b.close()
        self.buffers.clear()


class InferenceHost:
    """The models and link threads of the inference host process (usable in-process in tests)."""

    def __init__(self, config: Config, metrics: Optional[Metrics] = None):
        self.config = config
        self.registry = ModelRegistry(config)
        self.metrics = metrics
        self._coalescers: dict[str, Coalescer] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._conns: list = []
        self._closed = False

    def start(self, links) -> None:
        """Start loading every model and serving each link (a duplex Connection from one front-end)
        on its own thread."""
        self.registry.start_loading()
        for conn in links:
            self.add_link(conn)

    def add_link(self, conn) -> None:
        """Serve one more front-end link (tests give each of their front-ends its own)."""
        with self._lock:
            self._conns.append(conn)
            t = threading.Thread(target=self._serve_link, args=(conn,), name=f"link-{len(self._threads)}",
                                 daemon=True)
            self._threads.append(t)
        t.start()

    # -- per model ------------------------------------------------------------------------
    def _wait_loaded(self, model: ServedModel) -> None:
        while model.state is ModelState.LOADING and not self._closed:
            time.sleep(0.05)

    def describe(self, name: str) -> ModelDescription:
        model = self.registry.get(name)
        self._wait_loaded(model)
        runner = model.runner
        d = ModelDescription(state=model.state.value, reason=model.state_reason,
                             attempts=list(model.attempts), accuracy=list(model.accuracy),
                             image_input=model.image_input, normalize_on_gpu=model.normalize_on_gpu,
                             decode_on_gpu=model.decode_on_gpu, host_pid=os.getpid())
        if runner is not None and model.state is ModelState.READY:
            # The link pickles it: the front-end gets its own copy of info.
            d.inputs, d.outputs, d.info = list(runner.inputs), list(runner.outputs), runner.info
        return d

    def coalescer(self, name: str) -> Coalescer:
        model = self.registry.get(name)
        runner = model.require_ready()
        with self._lock:
            c = self._coalescers.get(name)
            if c is None or c.runner is not runner:
                if self._closed:
                    raise ModelNotReady(f"model {name!r}: the inference process is shutting down")
                cfg = model.cfg.batching
                max_batch = effective_max_batch(cfg, runner)
                on_batch = (lambda n: self.metrics.observe_batch(name, n)) if self.metrics else (lambda _n: None)
                preferred = [s for s in cfg.preferred_batch_sizes if s <= max_batch]
                c = Coalescer(name, runner, max_batch, batch_buckets(cfg, runner, max_batch), on_batch,
                              fill_rows=min(preferred) if preferred else max_batch,
                              fill_delay_s=cfg.merge_delay_us / 1e6)
                self._coalescers[name] = c
                log.info("model %s: merging front-end batches up to %d rows on %d slot(s)",
                         name, max_batch, c.slots)
            return c

    # -- per link -------------------------------------------------------------------------
    def _serve_link(self, conn) -> None:
        link = _Link(conn)
        try:
            while True:
                try:
                    msg = conn.recv()
                except (EOFError, OSError):  # the front-end closed its end (or died)
                    return
                kind = msg[0]
                if kind == "buffer":
                    _kind, key, nbytes = msg
                    fd = reduction.recv_handle(conn)
                    link.buffers[key] = SharedBuffer(nbytes, fd, key)
                elif kind == "drop":
                    dropped = link.buffers.pop(msg[1], None)
                    if dropped is not None:
                        dropped.close()
                elif kind == "infer":
                    self._submit(link, *msg[1:])
                elif kind == "describe":
                    # Waits while the model loads: on its own thread, so this link's calls of ready
                    # models go on.
                    threading.Thread(target=self._describe_for, args=(link, msg[1], msg[2]),
                                     name="describe", daemon=True).start()
                else:
                    link.answer(msg[1] if len(msg) > 1 else -1, ("error", "InferenceError", f"unknown message {kind!r}"))
        finally:
            link.close()

    def _describe_for(self, link: _Link, call_id: int, name: str) -> None:
        try:
            reply = ("ok", self.describe(name))
        except Exception as exc:  # noqa: BLE001 - answered to this call
            reply = error_reply(exc)
        link.answer(call_id, reply)

    def _submit(self, link: _Link, call_id: int, name: str, key: int, layout, rows: int, free_at: int) -> None:
        """Hand a call's rows to its model's Coalescer, which answers on its slot thread when they have run."""
        received = time.perf_counter()
        buffer = link.buffers.get(key)

        def on_done(merged: Optional[Merged], error: Optional[BaseException]) -> None:
            try:
                reply = self._reply(name, buffer, free_at, received, merged, error)
            except Exception as exc:  # noqa: BLE001 - e.g. the link closed its buffer meanwhile
                reply = error_reply(exc)
            link.answer(call_id, reply)

        try:
            if buffer is None:
                raise ModelNotReady(f"the front-end's buffer {key} never arrived")
            self.coalescer(name).submit(buffer.read(layout), rows, on_done)
        except Exception as exc:  # noqa: BLE001 - answered to this call; the link lives on
            on_done(None, exc)

    def _reply(self, name: str, buffer: Optional[SharedBuffer], free_at: int, received: float,
               merged: Optional[Merged], error: Optional[BaseException]) -> tuple:
        """The answer to one call: its outputs written back into its buffer (or inline), or its error."""
        if error is not None:
            code, _message = status_of(error)  # logs an unexpected error with its traceback
            if self.metrics is not None:
                self.metrics.observe_request(name, code.name)
            return error_reply(error)
        outputs = merged.outputs
        written = time.perf_counter()
        # Into the buffer after the inputs when they fit (the front-end reserved room for
        # fixed-shape outputs); otherwise (outputs with dynamic dimensions) pickled inline.
        if free_at + bytes_needed(outputs) <= buffer.nbytes:
            layout_out, _ = buffer.write(outputs, free_at)
            reply = ("ok", layout_out, merged.ran_rows)
        else:
            reply = ("ok-inline", {n: np.ascontiguousarray(a) for n, a in outputs.items()}, merged.ran_rows)
        if self.metrics is not None:
            # At the host a "request" is one front-end call: queue = waiting for a slot, inference =
            # its rows' runner call(s), postprocess = writing the outputs back, total = received to reply.
            now = time.perf_counter()
            self.metrics.observe_ok(name, (elapsed_us(merged.wait_s), 0, elapsed_us(merged.run_s),
                                           elapsed_us(now - written), elapsed_us(now - received)))
        return reply

    # -- shutdown -------------------------------------------------------------------------
    def wait_links(self, timeout: float) -> bool:
        """Wait until every front-end closed its link; False on timeout."""
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def close(self, timeout: float = 10.0) -> None:
        """Stop: run what is queued and answer it, end every link (a front-end still calling gets
        ModelNotReady: "the inference process is gone"), unload the models."""
        with self._lock:
            self._closed = True
            coalescers = list(self._coalescers.values())
        for c in coalescers:
            c.close(timeout)  # its slots answer what they run
        for conn in self._conns:
            shutdown_connection(conn)
        self.registry.close()


def host_main(config: Config, links, events, index: int, log_level: int, tick_s: float = 1.0) -> None:
    """Body of the inference host process (started by the supervisor, with its child_config)."""
    prepare_child("inference", log_level)
    parent = os.getppid()
    stop = threading.Event()
    # Ctrl-C reaches the whole process group: the supervisor orders the stop, SIGTERM carries it.
    # SIGHUP too: its models change on restart only (a reload reaches the front-ends).
    signals.route({signal.SIGTERM: stop.set, signal.SIGINT: None, signals.RELOAD: None})
    try:
        metrics = Metrics()
        metrics.declare_models(m.name for m in config.models)
        endpoint = None
        if config.metrics.enabled:
            endpoint = MetricsEndpoint(metrics.registry, config.metrics)
            try:
                endpoint.start()
            except (OSError, ValueError) as exc:
                log.error("%s", exc)
        served = InferenceHost(config, metrics)
        served.start(links)
        events.put(("listening", index, None))
        while not stop.wait(tick_s):
            if os.getppid() != parent:
                log.error("supervisor %d is gone; stopping", parent)
                break
            events.put(("tick", index, None))
            if endpoint is not None:
                endpoint.ensure_started()
        # The supervisor stops the front-ends first; give any straggler its grace period.
        served.wait_links(config.server.grace_period_s)
        served.close(config.server.grace_period_s)
        if endpoint is not None:
            endpoint.stop()
        metrics.close()
        log.info("stopped")
    except BaseException as exc:  # noqa: BLE001 - reported, then the process ends non-zero
        log.exception("inference process failed")
        events.put(("error", index, f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1)
