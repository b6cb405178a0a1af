"""The client as a kiosk developer uses it: per-frame stream deadlines, request ids, every failure a
ClientError with a message that helps."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from edgeinfer_client import AsyncClient, Client, ClientError, InferResult


def _trivial_config(trivial_onnx, tmp_path):
    from edgeinfer.config import parse_config

    return parse_config({
        "server": {"workers": 1, "inline_max_us": 0},  # every request takes the one worker
        "cache": {"dir": str(tmp_path)},
        "models": [{"name": "trivial", "onnx": str(trivial_onnx), "backends": ["onnxruntime"],
                    "postprocess": {"task": "raw"},
                    "onnxruntime": {"providers": ["CPUExecutionProvider"], "intra_op_threads": 1}}],
    })


@pytest.fixture(scope="module")
def trivial_daemon(start_daemon, trivial_onnx, tmp_path_factory):
    return start_daemon(_trivial_config(trivial_onnx, tmp_path_factory.mktemp("client")))


FRAME = {"x": np.zeros((1, 64), np.float32)}


def _slow_frames(n: int, pause: float):
    for _ in range(n):
        yield np.zeros((8, 8, 3), np.uint8)
        time.sleep(pause)


def test_stream_deadline_is_per_frame_not_per_stream(client):
    """A camera slower than the timeout: the stream lives on (the whole stream outlasts the timeout)."""
    start = time.monotonic()
    items = list(client.stream("faces", _slow_frames(3, 0.6), timeout=0.5))
    assert time.monotonic() - start > 1.5
    assert len(items) == 3 and all(isinstance(i, InferResult) for i in items)


def test_stalled_daemon_ends_the_stream_with_deadline_exceeded(trivial_daemon):
    block = threading.Event()
    trivial_daemon.daemon.pipeline.executor.submit(block.wait, 20)
    try:
        with Client(trivial_daemon.address) as c:
            start = time.monotonic()
            with pytest.raises(ClientError) as info:
                list(c.stream("trivial", iter([None]), timeout=0.5, tensors=FRAME))
            assert info.value.code == "DEADLINE_EXCEEDED" and "per-frame" in info.value.message
            assert time.monotonic() - start < 5
    finally:
        block.set()


def test_stream_request_id_is_a_prefix(client, media):
    items = list(client.stream("faces", [media / "astronaut.png"] * 2, request_id="cam7-"))
    assert [i.request_id for i in items] == ["cam7-0", "cam7-1"]


def test_async_stream_request_id_and_deadline(daemon, media):
    async def camera(n, pause):
        for _ in range(n):
            yield np.zeros((8, 8, 3), np.uint8)
            await asyncio.sleep(pause)

    async def main():
        async with AsyncClient(daemon.address) as c:
            return [i async for i in c.stream("faces", camera(2, 0.6), timeout=0.5, request_id="a")]

    items = asyncio.run(main())
    assert [i.request_id for i in items] == ["a0", "a1"]


def test_missing_file_is_a_client_error(client):
    with pytest.raises(ClientError) as info:
        client.infer("faces", "/missing.jpg")
    assert info.value.code == "INVALID_ARGUMENT" and "/missing.jpg" in info.value.message
    assert "No such file" in info.value.message
    with pytest.raises(ClientError) as info:  # in a stream: the frames before it are answered first
        list(client.stream("faces", ["/missing.jpg"]))
    assert info.value.code == "INVALID_ARGUMENT"


def test_bad_arguments_are_client_errors(client):
    with pytest.raises(ClientError) as info:
        client.infer("faces", np.zeros((4, 4), np.float32))
    assert info.value.code == "INVALID_ARGUMENT" and "uint8" in info.value.message
    with pytest.raises(ClientError):
        Client("127.0.0.1:1", tls={"ca": "/nonexistent/ca.pem"})


def test_health_of_an_unknown_name_says_what_exists(client):
    with pytest.raises(ClientError) as info:
        client.health("nosuch")
    assert info.value.code == "NOT_FOUND"
    assert "'nosuch'" in info.value.message and "faces" in info.value.message and "imagenet" in info.value.message


def test_result_to_dict_is_whole(client, media):
    d = client.infer("faces", media / "astronaut.png").to_dict()
    assert d["image_size"] == [512, 512] and d["backend"] == "onnxruntime" and d["precision"] == "fp32"
    assert d["model_version"] == "1" and len(d["detections"][0]["landmarks"]) == 5
