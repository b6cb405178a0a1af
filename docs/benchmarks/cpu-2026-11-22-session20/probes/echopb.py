"""A bare grpc.aio server serving edgeinfer.v1.Inference/Infer: parses the InferRequest, answers a constant (probe). argv: PORT"""
import asyncio, sys
sys.path[:0] = ["/work/main/daemon", "/work/main/clients"]
import grpc, uvloop
from edgeinfer_client._proto.edgeinfer.v1 import inference_pb2 as pb
from edgeinfer.server.methods import add_service
from edgeinfer.server.servicer import SERVICE_NAME
B = bytes(314)
async def infer(request, context):
    return B
async def main():
    s = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20), ("grpc.so_reuseport", 0)])
    add_service(s, SERVICE_NAME, {"Infer": grpc.unary_unary_rpc_method_handler(infer, request_deserializer=pb.InferRequest.FromString)})
    s.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
    await s.start(); await s.wait_for_termination()
uvloop.install(); asyncio.run(main())
