"""TensorRT backend: engines built on this device from the shared ONNX, cached on disk.

Modules (none imports TensorRT at import time):
    loader.py        RunnerFromOnnx / EngineBytesFromOnnx / plan_build (the entry points)
    builder.py       ONNX -> serialized engine (profiles, workspace, DLA, timing cache, progress)
    runner.py        execution contexts, streams, buffers (written from the docs; has not run)
    cache.py         engine cache: key, manifest, atomic writes, locking, list/verify/prune
    profiles.py      optimization-profile policy (pure Python)
    compat.py        tensorrt 10.x / 11.x / tensorrt_rtx differences
    cuda_buffers.py  cuda-python device/pinned buffers and streams
    onnx_info.py     ONNX inputs and content hash
"""
