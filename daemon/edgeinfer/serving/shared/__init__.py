"""[server] inference = "shared": one process runs every model for all front-end processes.

Why: with `[server] processes = N` each process used to load its own copy of
every model. On a fast GPU that means N CUDA contexts time-slicing the GPU
(no MPS) and N batchers each forming small batches (3-6 rows of ResNet-50 at 32
clients over 3 processes, padded up to buckets). Measured on an H100: 3
processes reached 0.64 of the in-process ceiling and a 4th process made it
slower.

Shared mode splits the work by what it needs:

* front-end processes (`[server] processes` of them, on one port) do gRPC,
  decode, preprocessing, their own batching and postprocessing, each with
  its own GIL;
* one inference host process (`host.py`) loads each model once, on one CUDA
  context, and merges the front-ends' batches into bigger ones
  (`coalesce.py`) before running them.

Between them (`wire.py`): per front-end, a few duplex Unix-socket channels,
each with a memfd-backed buffer that both processes map. A call writes its
input rows into the buffer, sends a small message (tensor names, dtypes,
shapes, offsets), and the host writes the outputs back into the same buffer.
Tensors never go through pickle. The front-end side (`remote.py`) is a
`Runner`, so batching, metrics and errors above it are unchanged.
"""
