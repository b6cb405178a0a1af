"""TensorRT backend: engines built on this device from the shared ONNX, cached on disk.

Modules (none imports TensorRT at import time):
    loader.py        RunnerFromOnnx / EngineBytesFromOnnx / plan_build (the entry points)
    builder.py       ONNX -> serialized engine (profiles, workspace, DLA, timing cache, progress)
    runner.py        execution contexts, streams, buffers (written from the docs; has not run);
                     its buffers and streams are runtime/gpu/memory.py's
    profiles.py      optimization-profile policy (pure Python)
    compat.py        tensorrt 10.x / 11.x / tensorrt_rtx differences
    onnx_info.py     ONNX inputs and content hash
The engine cache (key, manifest, list/verify/prune) is edgeinfer/cache/engines.py.
"""
