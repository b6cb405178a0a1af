"""Who am I: CPU/GPU, compute capability, driver and CUDA versions, TensorRT,
ONNX Runtime providers, Jetson model and L4T release.

Every probe is optional and cheap; a missing library answers None, never
raises. The engine cache key is built from `PlatformInfo`, so what is read
here decides when an engine is rebuilt.
"""
from __future__ import annotations

import functools
import os
import platform as _pyplatform
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional


@dataclass
class GpuInfo:
    index: int
    name: str
    compute_capability: str  # "9.0"
    total_memory_mb: Optional[int] = None


@dataclass
class PlatformInfo:
    machine: str
    python: str
    cuda_driver: Optional[str] = None   # driver API version, e.g. "13.0"
    cuda_runtime: Optional[str] = None  # cudart version cuda-python links, e.g. "13.0"
    gpus: list[GpuInfo] = field(default_factory=list)
    tensorrt: Optional[str] = None
    tensorrt_rtx: Optional[str] = None
    onnxruntime: Optional[str] = None
    onnxruntime_providers: list[str] = field(default_factory=list)
    jetson_model: Optional[str] = None
    l4t_release: Optional[str] = None
    nvidia_driver: Optional[str] = None

    def as_dict(self) -> dict:
        return asdict(self)


def _read(path: str) -> Optional[str]:
    try:
        return Path(path).read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return None


def jetson_info() -> tuple[Optional[str], Optional[str]]:
    """(model, L4T release) on a Jetson; (None, None) elsewhere."""
    release = _read("/etc/nv_tegra_release")
    l4t = None
    if release:
        # "# R36 (release), REVISION: 4.3, GCID: ..." -> "36.4.3"
        m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", release)
        if m:
            l4t = f"{m.group(1)}.{m.group(2)}"
    model = _read("/proc/device-tree/model") if release or os.path.exists("/etc/nv_tegra_release") else None
    if model is None and release:
        model = "NVIDIA Jetson"
    return model, l4t


def _cudart():
    """cuda-python's runtime module under its 12.x/13.x name, or None."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
        return cudart
    except ImportError:
        pass
    try:
        from cuda import cudart  # older cuda-python
        return cudart
    except ImportError:
        return None


def _version_str(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def cuda_device_count() -> int:
    cudart = _cudart()
    if cudart is None:
        return 0
    try:
        err, n = cudart.cudaGetDeviceCount()
    except Exception:  # noqa: BLE001 - no driver at all
        return 0
    return int(n) if int(err) == 0 else 0


def gpu_present() -> bool:
    """Is there an NVIDIA GPU? cuda-python when installed, else the driver's device nodes.

    ONNX Runtime's CUDA build does not need cuda-python, so its absence must not
    hide a GPU (dGPU: /proc/driver/nvidia/gpus/*, Jetson: /dev/nvhost-* / nvgpu).
    """
    if _cudart() is not None:
        return cuda_device_count() > 0
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir() and any(gpus.iterdir()):
        return True
    return any(Path(p).exists() for p in ("/dev/nvhost-gpu", "/dev/nvgpu/igpu0/ctrl", "/dev/nvhost-ctrl-gpu"))


def visible_gpu_count() -> int:
    """GPUs this process may use, indexed 0.. within CUDA_VISIBLE_DEVICES; 0 on a CPU-only machine.

    cuda-python's count when it is installed (it applies CUDA_VISIBLE_DEVICES itself);
    otherwise the driver's GPUs (a Jetson has one), narrowed by CUDA_VISIBLE_DEVICES.
    """
    if _cudart() is not None:
        return cuda_device_count()
    if not gpu_present():
        return 0
    gpus = Path("/proc/driver/nvidia/gpus")
    n = sum(1 for _ in gpus.iterdir()) if gpus.is_dir() else 1
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        n = min(n, len([v for v in visible.split(",") if v.strip() and not v.strip().startswith("-")]))
    return n


def _gpus(cudart) -> list[GpuInfo]:
    out = []
    for i in range(cuda_device_count()):
        err, prop = cudart.cudaGetDeviceProperties(i)
        if int(err) != 0:
            continue
        name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
        out.append(GpuInfo(index=i, name=name.strip("\x00 "), compute_capability=f"{prop.major}.{prop.minor}",
                           total_memory_mb=int(prop.totalGlobalMem) // (1 << 20)))
    return out


def _nvidia_driver_version() -> Optional[str]:
    """Kernel driver version from /proc (dGPU); None on Jetson and without a driver."""
    text = _read("/proc/driver/nvidia/version") or ""
    m = re.search(r"Kernel Module(?: for \w+)?\s+([\d.]+)", text)
    return m.group(1) if m else None


@functools.lru_cache(maxsize=1)
def detect() -> PlatformInfo:
    """Probe this machine once per process."""
    info = PlatformInfo(machine=_pyplatform.machine(), python=_pyplatform.python_version())
    cudart = _cudart()
    if cudart is not None:
        try:
            err, v = cudart.cudaDriverGetVersion()
            if int(err) == 0 and v:
                info.cuda_driver = _version_str(v)
            err, v = cudart.cudaRuntimeGetVersion()
            if int(err) == 0 and v:
                info.cuda_runtime = _version_str(v)
            info.gpus = _gpus(cudart)
        except Exception:  # noqa: BLE001 - a broken driver means "no GPU" here
            pass
    info.nvidia_driver = _nvidia_driver_version()
    try:
        import tensorrt  # noqa: F401
        info.tensorrt = tensorrt.__version__
    except Exception:  # noqa: BLE001 - stub packages raise on import
        pass
    try:
        import tensorrt_rtx  # noqa: F401
        info.tensorrt_rtx = tensorrt_rtx.__version__
    except Exception:  # noqa: BLE001
        pass
    try:
        import onnxruntime
        info.onnxruntime = onnxruntime.__version__
        info.onnxruntime_providers = list(onnxruntime.get_available_providers())
    except Exception:  # noqa: BLE001
        pass
    info.jetson_model, info.l4t_release = jetson_info()
    return info
