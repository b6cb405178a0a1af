"""Bare grpc.aio servers that differ from the echo by protobuf only: parse the InferRequest, answer prebuilt bytes or a prebuilt InferResponse."""
import asyncio, sys
sys.path[:0] = ["/work/main/daemon", "/work/main/clients"]
import grpc, uvloop, numpy as np
from edgeinfer_client._proto.edgeinfer.v1 import inference_pb2 as pb
from edgeinfer.server.converters import add_output
MODE = sys.argv[1]
resp = pb.InferResponse(model="trivial", model_version="1", backend="onnxruntime", precision="fp32")
add_output(resp.outputs, "y", np.ones((1, 64), np.float32))
raw = resp.SerializeToString()
async def parse_raw(request, context):
    return raw
async def parse_msg(request, context):
    return resp
import onnxruntime as ort
so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
sess = ort.InferenceSession("/tmp/cfg/trivial.onnx", so, providers=["CPUExecutionProvider"])
x = np.ones((1, 64), np.float32)
async def ort_raw(request, context):
    sess.run(None, {"x": x})
    return raw
async def numpy_raw(request, context):
    x + 1
    return raw
if MODE == "ort":
    h = grpc.unary_unary_rpc_method_handler(ort_raw, request_deserializer=pb.InferRequest.FromString)
elif MODE == "numpy":
    h = grpc.unary_unary_rpc_method_handler(numpy_raw, request_deserializer=pb.InferRequest.FromString)
elif MODE == "parse":
    h = grpc.unary_unary_rpc_method_handler(parse_raw, request_deserializer=pb.InferRequest.FromString)
else:
    h = grpc.unary_unary_rpc_method_handler(parse_msg, request_deserializer=pb.InferRequest.FromString,
                                            response_serializer=pb.InferResponse.SerializeToString)
async def main():
    s = grpc.aio.server()
    s.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("edgeinfer.v1.Inference", {"Infer": h}),))
    s.add_insecure_port("127.0.0.1:50051")
    await s.start(); await s.wait_for_termination()
uvloop.install(); asyncio.run(main())
