"""Drives a running edgeinfer daemon with the unmodified tritonclient (sync and asyncio).

Run by tests/rpc/test_kserve_tritonclient.py in a process of its own: tritonclient registers
Triton's protobuf messages (package `inference`) in the process-wide descriptor pool, and so
does the daemon's own generated code, so the two cannot be imported into one process (as they
never are in practice: a client and a server). What it sees goes to OUT/observed.json and
OUT/outputs.npz; the test asserts on them.

    python tritonclient_scenarios.py ADDRESS MEDIA_DIR INPUTS.npz OUT_DIR
"""
from __future__ import annotations

import asyncio
import json
import queue
import sys
import traceback
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

STREAM_REQUESTS = 40


def _error(exc: InferenceServerException) -> dict:
    return {"status": str(exc.status()), "message": exc.message()}


def _image_input(data: list[bytes], name: str = "image"):
    arr = np.array(data, dtype=object)
    inp = grpcclient.InferInput(name, list(arr.shape), "BYTES")
    inp.set_data_from_numpy(arr)
    return inp


def _tensor_input(name: str, arr: np.ndarray, module=grpcclient):
    inp = module.InferInput(name, list(arr.shape), "FP32")
    inp.set_data_from_numpy(arr)
    return inp


def sync_part(address: str, media: Path, inputs: dict, seen: dict, arrays: dict) -> None:
    c = grpcclient.InferenceServerClient(address)
    seen["live"], seen["ready"] = c.is_server_live(), c.is_server_ready()
    seen["model_ready"] = {m: c.is_model_ready(m) for m in ("faces", "imagenet", "trivial", "nope")}
    md = c.get_server_metadata(as_json=True)
    seen["server_metadata"] = md
    seen["model_metadata"] = c.get_model_metadata("imagenet", as_json=True)
    seen["config_imagenet"] = c.get_model_config("imagenet", as_json=True)["config"]
    seen["config_trivial"] = c.get_model_config("trivial", as_json=True)["config"]

    # Tensors, raw (tritonclient sends raw_input_contents).
    r = c.infer("trivial", [_tensor_input("x", inputs["trivial_x"])], request_id="t-1")
    arrays["trivial_y"] = r.as_numpy("y")
    seen["trivial_response_id"] = r.get_response().id
    r = c.infer("imagenet", [_tensor_input(inputs["imagenet_input_name"].item(), inputs["imagenet_x"])])
    arrays["imagenet_logits"] = r.as_numpy(r.get_response().outputs[0].name)
    seen["imagenet_tensor_outputs"] = [o.name for o in r.get_response().outputs]

    # Typed contents (fp32_contents), through tritonclient's own generated stub.
    stub = service_pb2_grpc.GRPCInferenceServiceStub(c._channel)
    x = inputs["trivial_x"]
    req = service_pb2.ModelInferRequest(model_name="trivial", id="typed")
    t = req.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    t.contents.fp32_contents.extend(x.reshape(-1).tolist())
    resp = stub.ModelInfer(req)
    arrays["trivial_y_typed"] = np.frombuffer(resp.raw_output_contents[0], "<f4").reshape(tuple(resp.outputs[0].shape))

    # Encoded images as BYTES.
    coffee = (media / "coffee.png").read_bytes()
    chelsea = (media / "chelsea.png").read_bytes()
    astronaut = (media / "astronaut.png").read_bytes()
    r = c.infer("imagenet", [_image_input([coffee])])
    seen["coffee"] = {"labels": [b.decode() for b in r.as_numpy("labels")[0]],
                      "classes": r.as_numpy("classes")[0].tolist(), "scores": r.as_numpy("scores")[0].tolist(),
                      "outputs": sorted(o.name for o in r.get_response().outputs)}
    r = c.infer("imagenet", [_image_input([coffee, chelsea])], parameters={"top_k": 3},
                outputs=[grpcclient.InferRequestedOutput("labels")])
    seen["two_images"] = {"labels": [[b.decode() for b in row] for row in r.as_numpy("labels")],
                          "outputs": [o.name for o in r.get_response().outputs]}
    r = c.infer("faces", [_image_input([astronaut])])
    seen["astronaut"] = {"counts": r.as_numpy("counts").tolist(), "boxes": r.as_numpy("boxes").tolist(),
                         "labels": [[b.decode() for b in row] for row in r.as_numpy("labels")],
                         "outputs": sorted(o.name for o in r.get_response().outputs)}

    # Errors, as tritonclient raises them.
    errors = {}
    for key, call in {
        "unknown_model": lambda: c.infer("nope", [_tensor_input("x", x)]),
        "wrong_shape": lambda: c.infer("trivial", [_tensor_input("x", np.zeros((1, 3), np.float32))]),
        "bad_image": lambda: c.infer("imagenet", [_image_input([b"not an image"])]),
        "unknown_output": lambda: c.infer("trivial", [_tensor_input("x", x)],
                                          outputs=[grpcclient.InferRequestedOutput("zzz")]),
        "metadata_unknown": lambda: c.get_model_metadata("nope"),
    }.items():
        try:
            call()
            errors[key] = None
        except InferenceServerException as exc:
            errors[key] = _error(exc)
    seen["errors"] = errors

    # Streaming: many requests on one stream, one of them bad.
    answers: "queue.Queue" = queue.Queue()
    c.start_stream(callback=lambda result, error: answers.put((result, error)))
    for i in range(STREAM_REQUESTS):
        if i == 7:
            c.async_stream_infer("trivial", [_tensor_input("x", np.zeros((1, 3), np.float32))], request_id="bad")
            continue
        c.async_stream_infer("trivial", [_tensor_input("x", np.full((1, 64), i, np.float32))], request_id=str(i))
    got, errs = {}, []
    for _ in range(STREAM_REQUESTS):
        result, error = answers.get(timeout=60)
        if error is not None:
            errs.append(_error(error) if isinstance(error, InferenceServerException) else str(error))
        else:
            got[result.get_response().id] = float(result.as_numpy("y")[0, 0])
    c.stop_stream()
    seen["stream"] = {"answers": got, "errors": errs}

    stats = c.get_inference_statistics("trivial", as_json=True)
    seen["stats_trivial"] = stats["model_stats"][0]
    seen["repository_index"] = c.get_model_repository_index(as_json=True)

    # Unload, then load again.
    c.unload_model("trivial")
    seen["after_unload"] = {"ready": c.is_model_ready("trivial"),
                            "index": c.get_model_repository_index(as_json=True)}
    try:
        c.infer("trivial", [_tensor_input("x", x)])
        seen["after_unload"]["infer"] = None
    except InferenceServerException as exc:
        seen["after_unload"]["infer"] = _error(exc)
    c.load_model("trivial")
    seen["after_load"] = {"ready": c.is_model_ready("trivial"),
                          "y": c.infer("trivial", [_tensor_input("x", x)]).as_numpy("y").tolist()}
    c.close()


async def aio_part(address: str, media: Path, inputs: dict, seen: dict) -> None:
    c = aioclient.InferenceServerClient(address)
    out = {"live": await c.is_server_live(), "ready": await c.is_server_ready(),
           "model_ready": await c.is_model_ready("imagenet"),
           "metadata_name": (await c.get_model_metadata("imagenet", as_json=True))["name"],
           "max_batch_size": (await c.get_model_config("trivial", as_json=True))["config"].get("max_batch_size", 0)}
    x = inputs["trivial_x"]
    r = await c.infer("trivial", [_tensor_input("x", x, aioclient)])
    out["y"] = r.as_numpy("y").tolist()
    coffee = (media / "coffee.png").read_bytes()
    arr = np.array([coffee], dtype=object)
    img = aioclient.InferInput("image", [1], "BYTES")
    img.set_data_from_numpy(arr)
    r = await c.infer("imagenet", [img])
    out["coffee_top"] = r.as_numpy("labels")[0][0].decode()

    async def requests():
        for i in range(STREAM_REQUESTS):
            yield {"model_name": "trivial", "inputs": [_tensor_input("x", np.full((1, 64), i, np.float32), aioclient)],
                   "request_id": f"a{i}"}

    got = {}
    async for result, error in c.stream_infer(requests()):
        if error is None:
            got[result.get_response().id] = float(result.as_numpy("y")[0, 0])
    out["stream"] = got
    out["stats_count"] = int((await c.get_inference_statistics("trivial", as_json=True))
                             ["model_stats"][0].get("inference_count", 0))
    await c.unload_model("trivial")
    out["ready_after_unload"] = await c.is_model_ready("trivial")
    await c.load_model("trivial")
    out["ready_after_load"] = await c.is_model_ready("trivial")
    await c.close()
    seen["aio"] = out


def main() -> int:
    address, media, inputs_path, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
    inputs = dict(np.load(inputs_path, allow_pickle=False))
    seen: dict = {}
    arrays: dict = {}
    try:
        sync_part(address, media, inputs, seen, arrays)
        asyncio.run(aio_part(address, media, inputs, seen))
    except Exception:  # noqa: BLE001 - reported to the test, which fails with it
        seen["crash"] = traceback.format_exc()
    (out / "observed.json").write_text(json.dumps(seen, indent=1, default=str))
    np.savez(out / "outputs.npz", **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main())
