"""Session from ONNX: picks execution providers, builds the ORT session."""
from __future__ import annotations

import logging
import os

from edgeinfer.errors import BackendLoadError, BackendUnavailable
from edgeinfer.runtime import LoadRequest
from edgeinfer.runtime.onnxruntime.runner import OnnxRuntimeRunner

try:
    import onnxruntime as ort
except ImportError as exc:  # pragma: no cover - the daemon extra installs it
    raise ImportError(f"onnxruntime: {exc}") from exc

log = logging.getLogger(__name__)

OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it and a GPU answers, then CPU.

    The TensorRT EP is deliberately not picked: edgeinfer's own TensorRT
    backend owns engine building and caching.
    """
    available = ort.get_available_providers()
    chosen = []
    if "CUDAExecutionProvider" in available and _cuda_device_present():
        chosen.append("CUDAExecutionProvider")
    chosen.append("CPUExecutionProvider")
    return chosen


def _cuda_device_present() -> bool:
    from edgeinfer import platform as plat

    return plat.gpu_present()


def intra_op_threads(configured: int = 0) -> int:
    """The intra-op thread count to give ONNX Runtime: `configured`, or with 0 one per CPU this process may use.

    ORT's own default (0) starts one pool thread per physical core of the machine
    and pins each to a core, ignoring the process's CPU mask (taskset, systemd's
    CPUAffinity=): measured on the dev box, a session made on CPU 0 alone started
    its pool thread pinned to CPU 1 (and onnxruntime issue #8313 reports sessions
    that fail where a cgroup cpuset refuses the pinning). An explicit count starts
    unpinned threads, which keep the mask. So where the mask holds fewer CPUs than
    the machine, the count is the mask's size; otherwise ORT's default stands.
    """
    if configured:
        return configured
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return 0
    return allowed if allowed < (os.cpu_count() or allowed) else 0


def session_options(graph_optimization: str = "all", intra_op: int = 0, inter_op: int = 0,
                    spinning: bool = True) -> "ort.SessionOptions":
    """SessionOptions as every session of the daemon gets them (the served ones and the precision gate's).

    Threads within this process's CPU mask (`intra_op_threads`), the graph optimization
    level by its config name, and ORT's warnings about initializers listed as graph
    inputs (old IR models) kept quiet.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads(intra_op)
    opts.inter_op_num_threads = inter_op
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[graph_optimization])
    opts.log_severity_level = 3
    return opts


def _with_options(provider: str, cfg, device: int = 0) -> "str | tuple[str, dict]":
    """A provider name, or (name, options) where the config sets any for it.

    The CUDA EP always gets its device_id: CudaIoBinding reads it back from the session to put
    our own buffers on the same GPU."""
    if provider == "CUDAExecutionProvider":
        options = {"device_id": str(device)}
        if cfg.cudnn_conv_algo_search != "auto":
            options["cudnn_conv_algo_search"] = cfg.cudnn_conv_algo_search.upper()
        return provider, options
    return provider


class RunnerFromOnnx:
    """Lazy loader: `RunnerFromOnnx(request)()` returns an active OnnxRuntimeRunner."""

    def __init__(self, request: LoadRequest):
        self.request = request

    def __call__(self) -> OnnxRuntimeRunner:
        cfg = self.request.model.onnxruntime
        providers = list(cfg.providers) or default_providers()
        provider_args = [_with_options(p, cfg, self.request.device) for p in providers]
        unknown = [p for p in providers if p not in ort.get_available_providers()]
        if unknown:
            raise BackendUnavailable(f"onnxruntime {ort.__version__} has no {unknown} "
                                     f"(available: {ort.get_available_providers()})")
        opts = session_options(cfg.graph_optimization, cfg.intra_op_threads, cfg.inter_op_threads,
                               cfg.intra_op_spinning)
        self.request.progress(f"creating onnxruntime session ({', '.join(providers)})")
        session = self._session(opts, provider_args)
        # ORT silently drops a provider it cannot initialise (e.g. CUDA without
        # cuDNN); report what is really in use.
        used = session.get_providers()
        if providers[0] != used[0]:
            log.warning("model %s: asked for %s, onnxruntime runs it on %s",
                        self.request.model.name, providers[0], used[0])
        runner = OnnxRuntimeRunner(session, precision=self.request.precision,
                                   max_concurrency=cfg.instances)
        sizes = self._pinned_sizes(runner)
        if sizes:
            self.request.progress(f"creating {len(sizes)} more sessions, one per batch size "
                                  f"{', '.join(map(str, sizes))}")
            runner.pin_batch_sizes({b: self._session(opts, provider_args) for b in sizes})
        runner.activate()
        return runner

    def _session(self, opts, provider_args):
        try:
            return ort.InferenceSession(str(self.request.onnx_path), sess_options=opts, providers=provider_args)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise BackendLoadError(f"onnxruntime could not load {self.request.onnx_path.name}: {exc}") from exc

    def _pinned_sizes(self, runner: OnnxRuntimeRunner) -> list[int]:
        """Batch sizes that get a session of their own; the smallest bucket stays on the main one."""
        from edgeinfer.runtime.buckets import batch_buckets, effective_max_batch

        model = self.request.model
        mode = model.onnxruntime.session_per_batch_size
        if mode == "off" or (mode == "auto" and not runner.info.device.startswith("cuda")):
            return []
        buckets = batch_buckets(model.batching, runner, effective_max_batch(model.batching, runner))
        if not buckets and mode == "on":
            log.warning("model %s: [onnxruntime] session_per_batch_size is on, but the batcher runs any size "
                        "(needs [batching] max_batch > 1 and pad_to_buckets): one session serves all",
                        model.name)
        return buckets[1:]
