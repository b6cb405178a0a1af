"""A test double of the TensorRT Python module (TensorRT cannot be installed here).

It records what edgeinfer's builder asks for (flags, profiles, pool limits, compute
capability) and lets tests decide outcomes (parse errors, build failure, a runtime that
refuses engines). Engines it "builds" are JSON bytes describing the request, so tests can
check what reached the builder; the double's runtime deserializes them into FakeEngine.

Only the API surface edgeinfer uses is modelled; names and call shapes follow NVIDIA's
Python API documentation.
"""
from __future__ import annotations

import enum
import json
import types

import numpy as np


class _Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class ILogger:
    Severity = _Severity

    def __init__(self):
        pass


class IProgressMonitor:
    def __init__(self):
        pass


class NetworkDefinitionCreationFlag(enum.IntEnum):
    STRONGLY_TYPED = 1


class BuilderFlag(enum.IntEnum):
    FP16 = 0
    INT8 = 1
    GPU_FALLBACK = 3


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class DeviceType(enum.IntEnum):
    GPU = 0
    DLA = 1


class HardwareCompatibilityLevel(enum.IntEnum):
    NONE = 0
    AMPERE_PLUS = 1
    SAME_COMPUTE_CAPABILITY = 2


class ComputeCapability(enum.IntEnum):
    NONE = 0
    CURRENT = 1
    SM75 = 75
    SM86 = 86
    SM89 = 89
    SM120 = 120


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1


def nptype(dt):
    return {DataType.FLOAT: np.float32, DataType.HALF: np.float16}[dt]


class _Tensor:
    def __init__(self, name, shape):
        self.name, self.shape = name, shape


class _Network:
    def __init__(self, flags, inputs):
        self.flags = flags
        self._inputs = [_Tensor(n, s) for n, s in inputs]

    @property
    def num_inputs(self):
        return len(self._inputs)

    def get_input(self, i):
        return self._inputs[i]


class _ParserError:
    def __init__(self, desc, node, name):
        self._d, self._n, self._name = desc, node, name

    def desc(self):
        return self._d

    def node(self):
        return self._n

    def node_name(self):
        return self._name

    def node_operator(self):
        return "FancyOp"


class _Profile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, lo, opt, hi):
        self.shapes[name] = [list(lo), list(opt), list(hi)]


class _HostMemory(bytes):
    """IHostMemory supports the buffer protocol; bytes does too."""


class _Config:
    def __init__(self, module):
        self._m = module
        self.flags = set()
        self.pools = {}
        self.profiles = []
        self.builder_optimization_level = 3
        self.default_device_type = DeviceType.GPU
        self.DLA_core = -1
        self.hardware_compatibility_level = HardwareCompatibilityLevel.NONE
        self.progress_monitor = None
        self.num_compute_capabilities = 0
        self.compute_capabilities = {}
        self.timing_cache = None

    def set_memory_pool_limit(self, pool, size):
        self.pools[pool] = size

    def set_flag(self, flag):
        self.flags.add(flag)

    def add_optimization_profile(self, p):
        self.profiles.append(p.shapes)
        return len(self.profiles) - 1

    def set_compute_capability(self, cc, index):
        assert index < self.num_compute_capabilities, "index must be < num_compute_capabilities"
        self.compute_capabilities[index] = cc

    def create_timing_cache(self, blob):
        return _TimingCache(bytes(blob))

    def set_timing_cache(self, cache, ignore_mismatch):
        if cache.data and not cache.data.startswith(b"TC:"):
            return False
        self.timing_cache = cache
        return True

    def get_timing_cache(self):
        return self.timing_cache


class _TimingCache:
    def __init__(self, data):
        self.data = data or b"TC:"

    def combine(self, other, ignore_mismatch):
        entries = set(self.data[3:].split(b",")) | set(other.data[3:].split(b","))
        self.data = b"TC:" + b",".join(sorted(e for e in entries if e))
        return True

    def serialize(self):
        return _HostMemory(self.data)


def make_module(version="10.3.0", name="tensorrt", inputs=(("input", (-1, 3, 224, 224)),),
                parse_errors=(), build_error=None, refuse=None, strongly_typed=True, weak_typing=True,
                rtx=False, dla_cores=0, build_log=None, phases=(("Building engine", 4),)):
    """A fresh fake module. `refuse`: runtime error text for every deserialize (None = accept)."""
    m = types.ModuleType(name)
    m.__version__ = version
    for obj in (ILogger, IProgressMonitor, MemoryPoolType, DeviceType, HardwareCompatibilityLevel,
                TensorIOMode, DataType, nptype):
        setattr(m, obj.__name__, obj)
    m.NetworkDefinitionCreationFlag = (NetworkDefinitionCreationFlag if strongly_typed
                                       else types.SimpleNamespace())
    m.BuilderFlag = BuilderFlag if weak_typing else types.SimpleNamespace(GPU_FALLBACK=3)
    if rtx:
        m.ComputeCapability = ComputeCapability
    m.ITimingCache = _TimingCache
    m.calls = {"builds": 0, "deserialize": 0, "configs": []}
    m.state = {"refuse": refuse}

    class Builder:
        def __init__(self, logger):
            self.logger = logger
            self.num_DLA_cores = dla_cores

        def create_network(self, flags):
            return _Network(flags, inputs)

        def create_builder_config(self):
            c = _Config(m)
            m.calls["configs"].append(c)
            return c

        def create_optimization_profile(self):
            return _Profile()

        def build_serialized_network(self, network, config):
            m.calls["builds"] += 1
            if config.progress_monitor is not None:
                for phase, steps in phases:
                    config.progress_monitor.phase_start(phase, None, steps)
                    for s in range(steps):
                        # As documented: stepComplete returning false cancels the build, which
                        # then returns no engine.
                        if config.progress_monitor.step_complete(phase, s) is False:
                            m.calls["cancelled"] = True
                            return None
                    config.progress_monitor.phase_finish(phase)
            if build_error:
                self.logger.log(_Severity.ERROR, build_error)
                return None
            if config.timing_cache is not None:
                config.timing_cache.combine(_TimingCache(b"TC:" + f"b{m.calls['builds']}".encode()), True)
            desc = {"flags": network.flags, "profiles": config.profiles,
                    "pools": {int(k): v for k, v in config.pools.items()},
                    "opt_level": config.builder_optimization_level,
                    "builder_flags": sorted(int(f) for f in config.flags),
                    "cc": {k: int(v) for k, v in config.compute_capabilities.items()},
                    "hwcompat": int(config.hardware_compatibility_level),
                    "dla": config.DLA_core, "inputs": [[n, list(s)] for n, s in inputs]}
            return _HostMemory(b"FAKEENGINE" + json.dumps(desc).encode())

    class OnnxParser:
        def __init__(self, network, logger):
            self.errors = [_ParserError(d, n, nm) for d, n, nm in parse_errors]

        def parse_from_file(self, path):
            return not self.errors

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            m.calls["deserialize"] += 1
            if m.state["refuse"]:
                self.logger.log(_Severity.ERROR, m.state["refuse"])
                return None
            if not bytes(data).startswith(b"FAKEENGINE"):
                self.logger.log(_Severity.ERROR, "Serialization assertion: magic tag mismatch")
                return None
            return FakeEngine(json.loads(bytes(data)[len(b"FAKEENGINE"):]))

    m.Builder, m.OnnxParser, m.Runtime = Builder, OnnxParser, Runtime
    return m


class FakeEngine:
    """Engine with one input and one output 'probs' = input.mean over CHW, shape (N, 1)."""

    def __init__(self, desc):
        self.desc = desc
        self.inputs = {n: tuple(s) for n, s in desc["inputs"]}
        self.num_optimization_profiles = max(1, len(desc["profiles"]))

    @property
    def num_io_tensors(self):
        return len(self.inputs) + 1

    def get_tensor_name(self, i):
        names = list(self.inputs) + ["probs"]
        return names[i]

    def get_tensor_mode(self, name):
        return TensorIOMode.INPUT if name in self.inputs else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return DataType.FLOAT

    def get_tensor_shape(self, name):
        return self.inputs.get(name, (-1, 1))

    def get_tensor_profile_shape(self, name, profile):
        return self.desc["profiles"][profile][name]

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    """Reads/writes 'device memory' through the fake CUDA buffer registry (see test_trt_runner)."""

    memory = None  # set by the test: ptr -> numpy uint8 array

    def __init__(self, engine):
        self.engine = engine
        self.shapes = {}
        self.addresses = {}
        self.profile = 0
        self.profile_switches = []

    def set_optimization_profile_async(self, index, stream):
        self.profile = index
        self.profile_switches.append(index)
        return True

    def set_input_shape(self, name, shape):
        lo, _opt, hi = self.engine.get_tensor_profile_shape(name, self.profile)
        if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        if name in self.engine.inputs:
            return self.shapes[name]
        (inp,) = self.engine.inputs
        return (self.shapes[inp][0], 1)

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr

    def execute_async_v3(self, stream):
        (inp,) = self.engine.inputs
        shape = self.shapes[inp]
        n = int(np.prod(shape))
        x = self.memory[self.addresses[inp]][: n * 4].view(np.float32).reshape(shape)
        y = x.reshape(shape[0], -1).mean(axis=1, keepdims=True).astype(np.float32)
        self.memory[self.addresses["probs"]][: y.nbytes] = y.view(np.uint8).ravel()
        return True
