"""TensorRT loader and builder control flow, with a TensorRT double (trt_double.py) and the
real engine cache. What TensorRT itself does is not tested here (it cannot run here)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from edgeinfer.runtime import LoadRequest, loader_for
from edgeinfer.runtime.tensorrt import compat, loader
from edgeinfer.runtime.tensorrt.builder import BuildSettings, build_engine
from edgeinfer.runtime.tensorrt.profiles import ShapeRange
from edgeinfer.errors import BackendLoadError, BackendUnavailable

from testkit.onnx_graphs import write_onnx


def request_for(model, cache_dir=None, progress=None, **kw):
    return LoadRequest(model=model, onnx_path=Path(model.onnx), cache_dir=cache_dir,
                       progress=progress or (lambda _m: None), **kw)


def engine_desc(blob_data: bytes) -> dict:
    """What the double's builder was asked to build (it serializes the request)."""
    assert blob_data.startswith(b"FAKEENGINE")
    return json.loads(blob_data[len(b"FAKEENGINE"):])


# -- availability ------------------------------------------------------------

def test_loader_module_imports_without_tensorrt():
    module = loader_for("tensorrt")
    assert hasattr(module, "RunnerFromOnnx")


def test_missing_tensorrt_is_backend_unavailable_with_each_reason(model_cfg):
    # Real import attempt: neither tensorrt nor tensorrt_rtx exists on this machine.
    import importlib.util

    if importlib.util.find_spec("tensorrt") or importlib.util.find_spec("tensorrt_rtx"):
        pytest.skip("a TensorRT module is installed here")
    with pytest.raises(BackendUnavailable, match=r"tensorrt: .*tensorrt_rtx: "):
        loader.RunnerFromOnnx(request_for(model_cfg()))()


def test_stub_package_and_lean_runtime_are_not_usable():
    def importer(name):
        if name == "tensorrt":
            raise RuntimeError("This is a stub package; install from https://pypi.nvidia.com")
        import types
        lean = types.ModuleType(name)
        lean.__version__ = "11.4.0"
        lean.Runtime = object  # runtime only, no Builder
        return lean

    with pytest.raises(BackendUnavailable) as info:
        compat.import_tensorrt(importer=importer)
    msg = str(info.value)
    assert "RuntimeError: This is a stub package" in msg
    assert "tensorrt_rtx 11.4.0: has no Builder/Runtime" in msg


def test_prefers_full_tensorrt_over_rtx(make_api):
    _, full = make_api(name="tensorrt", version="10.3.0")
    _, rtx = make_api(name="tensorrt_rtx", version="1.7.1", rtx=True)
    api = compat.import_tensorrt(importer={"tensorrt": full, "tensorrt_rtx": rtx}.__getitem__)
    assert (api.name, api.version, api.major, api.is_rtx) == ("tensorrt", "10.3.0", 10, False)


def test_missing_cuda_python_is_backend_unavailable(make_api, model_cfg, monkeypatch):
    from edgeinfer.runtime.gpu import memory

    def no_cuda():
        raise memory.GpuUnavailable("cuda-python is not installed")

    monkeypatch.setattr(memory, "cudart", no_cuda)
    api, _ = make_api()
    with pytest.raises(BackendUnavailable, match="tensorrt 10.3.0 is installed but cuda-python is not installed"):
        loader.RunnerFromOnnx(request_for(model_cfg()), api=api)()


def test_no_gpu_is_backend_unavailable(make_api, model_cfg, gpu_platform):
    api, _ = make_api()
    gpu_platform.gpus = []
    with pytest.raises(BackendUnavailable, match="no CUDA GPU is visible"):
        loader.plan_build(request_for(model_cfg()), api, gpu_platform)


# -- plan: settings and key ----------------------------------------------------

def test_default_profile_is_derived_and_reported(make_api, model_cfg, gpu_platform):
    api, _ = make_api()
    plan = loader.plan_build(request_for(model_cfg(batching={"max_batch": 8})), api, gpu_platform)
    assert plan.settings.profiles == ({"input": ShapeRange((1, 3, 8, 8), (8, 3, 8, 8), (8, 3, 8, 8))},)
    assert plan.settings.profile_copies == 2  # default [tensorrt] instances
    assert any("batch 1/8/8" in n for n in plan.notes)
    assert plan.key_fields["gpu_name"] == "NVIDIA H200" and plan.key_fields["compute_capability"] == "9.0"


def _key(make_api, model_cfg, gpu_platform, tmp_path, api_kw=None, onnx_scale=None, request_kw=None, **cfg):
    api, _ = make_api(**(api_kw or {}))
    model = model_cfg(**cfg)
    if onnx_scale is not None:
        model.onnx = str(write_onnx(tmp_path / f"m{onnx_scale}.onnx", scale=onnx_scale))
    return loader.plan_build(request_for(model, **(request_kw or {})), api, gpu_platform).key


@pytest.mark.parametrize("change", [
    {"tensorrt": {"workspace_mb": 256}},
    {"tensorrt": {"optimization_level": 5}},
    {"tensorrt": {"dla_core": 0}},
    {"tensorrt": {"hardware_compatibility": "ampere+"}},
    {"tensorrt": {"instances": 3}},
    {"tensorrt": {"profiles": [{"min": {"input": [1, 3, 8, 8]}, "opt": {"input": [2, 3, 8, 8]},
                                "max": {"input": [2, 3, 8, 8]}}]}},
    {"batching": {"max_batch": 16}},
    {"onnx_scale": 3.0},
    {"api_kw": {"version": "10.4.0"}},
    {"request_kw": {"precision": "fp16"}},
    {"request_kw": {"calibration_hash": "c" * 64}},
])
def test_every_setting_changes_the_key(make_api, model_cfg, gpu_platform, tmp_path, change):
    base = _key(make_api, model_cfg, gpu_platform, tmp_path)
    assert _key(make_api, model_cfg, gpu_platform, tmp_path, **change) != base
    assert _key(make_api, model_cfg, gpu_platform, tmp_path) == base  # and the key is stable


@pytest.mark.parametrize("attr, value", [("name", "NVIDIA A100"), ("compute_capability", "8.0")])
def test_gpu_changes_the_key(make_api, model_cfg, gpu_platform, tmp_path, attr, value):
    base = _key(make_api, model_cfg, gpu_platform, tmp_path)
    setattr(gpu_platform.gpus[0], attr, value)
    assert _key(make_api, model_cfg, gpu_platform, tmp_path) != base


def test_rtx_target_is_in_the_key_only_for_tensorrt_rtx(make_api, model_cfg, gpu_platform, tmp_path):
    rtx = {"name": "tensorrt_rtx", "version": "1.7.1", "rtx": True}
    a = _key(make_api, model_cfg, gpu_platform, tmp_path, api_kw=rtx, tensorrt={"rtx_compute_capability": "sm86"})
    b = _key(make_api, model_cfg, gpu_platform, tmp_path, api_kw=rtx, tensorrt={"rtx_compute_capability": "sm89"})
    assert a != b
    c = _key(make_api, model_cfg, gpu_platform, tmp_path, tensorrt={"rtx_compute_capability": "sm86"})
    d = _key(make_api, model_cfg, gpu_platform, tmp_path, tensorrt={"rtx_compute_capability": "sm89"})
    assert c == d  # ignored by the full TensorRT: no needless rebuild


# -- build ---------------------------------------------------------------------

def test_build_configures_strong_typing_profiles_and_limits(make_api, model_cfg, gpu_platform):
    api, module = make_api()
    model = model_cfg(tensorrt={"workspace_mb": 256, "optimization_level": 4, "instances": 3})
    plan = loader.plan_build(request_for(model, precision="fp16"), api, gpu_platform)
    desc = engine_desc(build_engine(api, Path(model.onnx), plan.settings))
    assert desc["flags"] == 1 << 1  # NetworkDefinitionCreationFlag.STRONGLY_TYPED of the double
    assert desc["builder_flags"] == []  # no FP16 flag: precision comes from the fp16 ONNX
    assert desc["pools"] == {"0": 256 << 20} and desc["opt_level"] == 4
    assert len(desc["profiles"]) == 3  # one copy per execution context
    assert all(p == {"input": [[1, 3, 8, 8], [4, 3, 8, 8], [4, 3, 8, 8]]} for p in desc["profiles"])


def test_weak_typing_fallback_sets_precision_flags(make_api, model_cfg, gpu_platform):
    api, module = make_api(strongly_typed=False)
    plan = loader.plan_build(request_for(model_cfg(), precision="int8"), api, gpu_platform)
    assert plan.settings.typing == "weak"
    desc = engine_desc(build_engine(api, Path(model_cfg().onnx), plan.settings))
    assert desc["flags"] == 0
    assert desc["builder_flags"] == sorted([int(module.BuilderFlag.FP16), int(module.BuilderFlag.INT8)])


def test_rtx_compute_capability_is_set(make_api, model_cfg, gpu_platform):
    api, module = make_api(name="tensorrt_rtx", version="1.7.1", rtx=True)
    model = model_cfg(tensorrt={"rtx_compute_capability": "sm86"})
    plan = loader.plan_build(request_for(model), api, gpu_platform)
    desc = engine_desc(build_engine(api, Path(model.onnx), plan.settings))
    assert desc["cc"] == {"0": int(module.ComputeCapability.SM86)}
    with pytest.raises(BackendLoadError, match=r"does not know compute capability 'sm99'.*sm86"):
        bad = BuildSettings(precision="fp32", profiles=plan.settings.profiles, rtx_compute_capability="sm99")
        build_engine(api, Path(model.onnx), bad)


def test_parser_errors_name_the_node(make_api, model_cfg, gpu_platform):
    api, _ = make_api(parse_errors=[("No importer registered for op: FancyOp", 3, "fancy_1")])
    plan = loader.plan_build(request_for(model_cfg()), api, gpu_platform)
    with pytest.raises(BackendLoadError, match=r"cannot parse tiny.onnx: No importer registered for op: "
                                               r"FancyOp \(node 'fancy_1', op FancyOp\)"):
        build_engine(api, Path(model_cfg().onnx), plan.settings)


def test_build_failure_carries_tensorrt_text_and_oom_hint(make_api, model_cfg, gpu_platform):
    api, _ = make_api(build_error="Requested amount of GPU memory could not be allocated: out of memory")
    plan = loader.plan_build(request_for(model_cfg()), api, gpu_platform)
    with pytest.raises(BackendLoadError, match=r"could not build the engine: Requested amount.*workspace_mb=1024"):
        build_engine(api, Path(model_cfg().onnx), plan.settings)


def test_dla_on_a_device_without_dla_is_unavailable(make_api, model_cfg, gpu_platform):
    api, _ = make_api(dla_cores=0)
    plan = loader.plan_build(request_for(model_cfg(tensorrt={"dla_core": 0})), api, gpu_platform)
    with pytest.raises(BackendUnavailable, match="DLA core 0 requested but this device has 0"):
        build_engine(api, Path(model_cfg().onnx), plan.settings)
    api2, module2 = make_api(dla_cores=2)
    desc = engine_desc(build_engine(api2, Path(model_cfg().onnx), plan.settings))
    assert desc["dla"] == 0 and int(module2.BuilderFlag.GPU_FALLBACK) in desc["builder_flags"]


def test_network_input_not_covered_by_profile_is_explained(make_api, model_cfg, gpu_platform):
    # TensorRT's network has an extra dynamic input the ONNX reader did not report.
    api, _ = make_api(inputs=(("input", (-1, 3, 8, 8)), ("mask", (-1, 8))))
    plan = loader.plan_build(request_for(model_cfg()), api, gpu_platform)
    with pytest.raises(BackendLoadError, match=r"missing \['mask'\]"):
        build_engine(api, Path(model_cfg().onnx), plan.settings)


def test_progress_monitor_reports_phases_through_request_progress(make_api, model_cfg, gpu_platform, tmp_path,
                                                                  no_cuda_check):
    api, _ = make_api(phases=(("Building engine", 3), ("Serializing", 1)))
    msgs = []
    loader.EngineBytesFromOnnx(request_for(model_cfg(), tmp_path, msgs.append), api=api)()
    assert "Building engine (3 steps)" in msgs and "Building engine done" in msgs
    assert "Serializing done" in msgs
    assert any(m.startswith("parsing tiny.onnx with tensorrt 10.3.0") for m in msgs)


def test_a_set_cancel_event_stops_the_build_at_its_next_step_and_caches_nothing(make_api, model_cfg,
                                                                               gpu_platform, tmp_path):
    """Shutdown sets LoadRequest.cancel: the monitor's step_complete answers False, the build ends
    with "cancelled", no engine is cached, and a later build (not cancelled) goes through."""
    import threading

    from edgeinfer.errors import BackendLoadError

    api, module = make_api(phases=(("Building engine", 50),))
    cancel = threading.Event()

    def progress(msg: str) -> None:
        if msg.startswith("Building engine"):  # the build has started: the daemon stops now
            cancel.set()

    with pytest.raises(BackendLoadError, match="could not build the engine: cancelled"):
        loader.EngineBytesFromOnnx(request_for(model_cfg(), tmp_path, progress, cancel=cancel), api=api)()
    assert module.calls.get("cancelled") is True
    assert not list((tmp_path / "engines").glob("*.engine"))
    module.calls["cancelled"] = False
    loader.EngineBytesFromOnnx(request_for(model_cfg(), tmp_path), api=api)()
    assert module.calls["cancelled"] is False and list((tmp_path / "engines").glob("*.engine"))


def test_timing_cache_is_persisted_per_platform_and_reused(make_api, model_cfg, gpu_platform, tmp_path):
    api, module = make_api()
    for workspace in (256, 512):  # two different engines, same platform
        model = model_cfg(tensorrt={"workspace_mb": workspace})
        loader.EngineBytesFromOnnx(request_for(model, tmp_path), api=api)()
    (tc,) = (tmp_path / "timing").glob("*.cache")
    assert tc.name == "tensorrt-10.3.0-nvidia-h200-sm90.cache"
    assert tc.read_bytes() == b"TC:b1,b2"  # the second build started from the first one's timings
    assert module.calls["configs"][1].timing_cache is not None


def test_rtx_skips_the_timing_cache(make_api, model_cfg, gpu_platform, tmp_path):
    api, _ = make_api(name="tensorrt_rtx", version="1.7.1", rtx=True)
    loader.EngineBytesFromOnnx(request_for(model_cfg(tensorrt={"rtx_compute_capability": "sm86"}), tmp_path),
                               api=api)()
    assert not list((tmp_path / "timing").glob("*.cache"))


# -- the whole loader: cache + deserialize -----------------------------------------

def test_runtime_refusal_is_backend_unavailable_and_second_start_does_not_rebuild(
        make_api, model_cfg, gpu_platform, tmp_path, no_cuda_check, monkeypatch, caplog):
    refusal = ("IRuntime::deserializeCudaEngine: Error Code 6: API Usage Error (The engine cannot run on "
               "this GPU, which has compute capability 9.0. Supported compute capabilities: 8.6.)")
    api, module = make_api(name="tensorrt_rtx", version="1.7.1", rtx=True, refuse=refusal)
    req = request_for(model_cfg(tensorrt={"rtx_compute_capability": "sm86"}), tmp_path)
    with pytest.raises(BackendUnavailable, match=r"cannot run the engine on NVIDIA H200 \(compute capability 9.0\)"
                                                 r".*Supported compute capabilities: 8.6"):
        loader.RunnerFromOnnx(req, api=api)()
    assert module.calls["builds"] == 1
    with caplog.at_level(logging.INFO):
        with pytest.raises(BackendUnavailable, match="not rebuilding"):
            loader.RunnerFromOnnx(req, api=api)()
    assert module.calls["builds"] == 1 and module.calls["deserialize"] == 2
    assert "engine cache hit" in caplog.text


def test_stale_cached_engine_is_rebuilt_then_activated(make_api, model_cfg, gpu_platform, tmp_path,
                                                       no_cuda_check, monkeypatch):
    api, module = make_api()
    req = request_for(model_cfg(), tmp_path)
    plan = loader.plan_build(req, api, gpu_platform)
    from edgeinfer.cache.engines import EngineCache

    # An engine from "another TensorRT" under the same key: the double's runtime rejects it.
    EngineCache(tmp_path).get_or_build(plan.key_fields, lambda: b"OLDPLAN" * 10)
    activated = []
    monkeypatch.setattr("edgeinfer.runtime.tensorrt.runner.TensorRTRunner.activate",
                        lambda self: activated.append(self))
    runner = loader.RunnerFromOnnx(req, api=api)()
    assert module.calls["builds"] == 1 and activated == [runner]
    assert runner.info.backend == "tensorrt" and runner.info.max_batch == 4
    assert runner.info.max_concurrency == 2 and runner.info.device == "cuda:0"
    assert runner.info.details["engine_key"] == plan.key
