"""What crosses between a front-end process and the inference host.

A link is one duplex `multiprocessing` connection (a Unix socketpair) per
front-end, carrying every call of that process, plus the shared buffers the
front-end made for it. The front-end creates a buffer (a memfd: anonymous
memory, not limited by the size of /dev/shm the way POSIX shared memory is in
containers, and freed when both sides close it), maps it, and passes the file
descriptor over the socket (SCM_RIGHTS) with the key both sides then name it
by. A call owns its buffer until its answer arrives, so buffers need no lock.

Messages are small tuples (pickled by the connection); every call carries an
id and its answer comes back as (id, reply), in whatever order calls finish:

    front-end -> host                                      host -> front-end
    ("buffer", key, nbytes) + the fd                       (none)
    ("drop", key)                                          (none)
    ("describe", id, model)                                (id, ("ok", ModelDescription) | ERROR)
    ("infer", id, model, key, layout, rows, free_at)       (id, ("ok", layout, ran) | ("ok-inline", arrays, ran) | ERROR)
    ERROR = ("error", class name, message)

A layout is a list of (name, dtype str, shape, offset) for tensors written
into the buffer (for an image input decoded on the GPU, (name, "jobs", table,
offset): the images' bytes are in the buffer, their resize plans in the table); `free_at` is where the host may start writing outputs; `ran`
is the real rows of the merged runner call the caller's rows ran in.
"""
from __future__ import annotations

import mmap
import os
import socket
from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np

from edgeinfer import errors
from edgeinfer.runtime.base import RunnerInfo, TensorSpec

ALIGN = 64  # bytes; keeps every tensor cache-line (and SIMD) aligned

Layout = list  # [(name, dtype str, shape tuple, offset)]


def aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class SharedBuffer:
    """A memfd mapped read-write: created here (`SharedBuffer(nbytes)`) or adopted from a peer's fd."""

    def __init__(self, nbytes: int, fd: Optional[int] = None, key: int = 0):
        self.nbytes = int(nbytes)
        self.key = key  # what the link's messages call it
        if fd is None:
            fd = os.memfd_create("edgeinfer-channel", os.MFD_CLOEXEC)
            os.ftruncate(fd, self.nbytes)
        self.fd = fd
        self._map = mmap.mmap(fd, self.nbytes)
        self._array = np.frombuffer(self._map, np.uint8)

    def view(self, offset: int, dtype, shape) -> np.ndarray:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        return self._array[offset:offset + count * dtype.itemsize].view(dtype).reshape(shape)

    def write(self, arrays: Mapping[str, np.ndarray], start: int = 0) -> tuple[Layout, int]:
        """Copy `arrays` in from `start`; returns their layout and the first free offset."""
        layout, offset = [], start
        for name, arr in arrays.items():
            if arr.dtype == object:
                table, offset_after = self._write_jobs(arr, offset)
                layout.append((name, JOBS, table, offset))
                offset = offset_after
                continue
            self.view(offset, arr.dtype, arr.shape)[...] = arr
            layout.append((name, arr.dtype.str, tuple(arr.shape), offset))
            offset = aligned(offset + arr.nbytes)
        return layout, offset

    def read(self, layout: Layout, copy: bool = False) -> dict[str, np.ndarray]:
        """The tensors a layout names: views into the buffer, or copies (`copy`, for a buffer about to be reused)."""
        out = {}
        for name, dtype, shape, offset in layout:
            if dtype == JOBS:
                out[name] = self._read_jobs(shape)
                continue
            v = self.view(offset, dtype, shape)
            out[name] = v.copy() if copy else v
        return out

    # An image input decoded on the GPU is a 1-D object array of ResizeJobs (runtime/gpu/image_job.py):
    # each distinct job's bytes (the JPEG, or pixels) go into the buffer and its plan into the
    # layout, as ("jobs" table, row -> table index). A row padding repeats is one entry, so the
    # host sees the same job object again, as the GPU runner expects of padding.
    def _write_jobs(self, jobs: np.ndarray, offset: int) -> tuple[tuple, int]:
        entries, index, rows = [], {}, []
        for job in jobs:
            if id(job) not in index:
                index[id(job)] = len(entries)
                payload = _payload(job)
                kind = "data" if isinstance(payload, (bytes, bytearray, memoryview)) else "pixels"
                raw = np.frombuffer(payload, np.uint8) if kind == "data" else np.ascontiguousarray(payload)
                self.view(offset, np.uint8, (raw.nbytes,))[...] = raw.reshape(-1).view(np.uint8)
                shape = () if kind == "data" else tuple(raw.shape)
                entries.append((kind, offset, raw.nbytes, shape, job.reduce, job.reduced_w, job.reduced_h,
                                job.resized_w, job.resized_h, job.dx, job.dy, job.swap_rb))
                offset = aligned(offset + raw.nbytes)
            rows.append(index[id(job)])
        return (tuple(entries), tuple(rows)), offset

    def _read_jobs(self, table: tuple) -> np.ndarray:
        from edgeinfer.runtime.gpu.image_job import ResizeJob, job_batch

        entries, rows = table
        jobs = []
        for kind, offset, nbytes, shape, *plan in entries:
            raw = self.view(offset, np.uint8, (nbytes,))
            if kind == "data":
                jobs.append(ResizeJob(*plan, data=raw.tobytes()))
            else:
                jobs.append(ResizeJob(*plan, pixels=raw.reshape(shape).copy()))
        return job_batch([jobs[i] for i in rows])

    def close(self) -> None:
        self._array = None
        try:
            self._map.close()
        except BufferError:  # a view still points into it: the mapping goes when the last view does
            pass
        os.close(self.fd)


JOBS = "jobs"  # a layout's dtype for an object array of ResizeJobs


def _payload(job):
    """What of a ResizeJob crosses: its encoded bytes, else its pixels. A frame in GPU memory cannot
    cross processes: it is copied to the host as pixels (BGR, as the job's swap_rb expects)."""
    if job.data:
        return job.data
    if job.pixels is not None:
        return job.pixels
    return job.frame.to_bgr()


def bytes_needed(arrays: Mapping[str, np.ndarray]) -> int:
    total = 0
    for a in arrays.values():
        if a.dtype != object:
            total += aligned(a.nbytes)
            continue
        seen = set()
        for job in a:
            if id(job) not in seen:
                seen.add(id(job))
                total += aligned(len(job.data) if job.data else
                                 job.pixels.nbytes if job.pixels is not None else job.frame.width * job.frame.height * 3)
    return total


def output_bytes(outputs: list[TensorSpec], rows: int) -> int:
    """Room the outputs of a `rows`-row call need; 0 when a dimension other than the batch is dynamic
    (the host then sends those outputs inline)."""
    total = 0
    for spec in outputs:
        dims = [rows if i == 0 and d == -1 else d for i, d in enumerate(spec.shape)]
        if any(d < 0 for d in dims):
            return 0
        total += aligned(int(np.prod(dims, dtype=np.int64)) * np.dtype(spec.dtype).itemsize)
    return total


def shutdown_connection(conn) -> None:
    """End a link from this side: wakes a thread blocked in its recv on either side (closing the fd
    would not wake one here)."""
    try:
        with socket.socket(fileno=os.dup(conn.fileno())) as s:
            s.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed
        pass


# -- errors ----------------------------------------------------------------------------------

def error_reply(exc: BaseException) -> tuple:
    return ("error", type(exc).__name__, str(exc))


def raise_reply(reply: tuple) -> None:
    """Raise the domain error an ("error", class name, message) reply carries."""
    _kind, name, message = reply
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, errors.EdgeInferError)):
        cls, message = errors.InferenceError, f"{name}: {message}"
    raise cls(message)


# -- describe ---------------------------------------------------------------------------------

@dataclass
class ModelDescription:
    """What a front-end needs to serve a model the host loaded (see ServedModel's load)."""

    state: str                 # ModelState value
    reason: str
    attempts: list = field(default_factory=list)
    accuracy: list = field(default_factory=list)
    inputs: list = field(default_factory=list)     # [TensorSpec]: what the runner takes, as the host serves it
    outputs: list = field(default_factory=list)
    info: Optional[RunnerInfo] = None
    image_input: Optional[TensorSpec] = None
    normalize_on_gpu: bool = False
    decode_on_gpu: bool = False  # the image input takes ResizeJobs (encoded images), decoded in the host
    host_pid: int = 0
