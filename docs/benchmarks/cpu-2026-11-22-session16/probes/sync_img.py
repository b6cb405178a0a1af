"""Probe: the image path on gRPC's thread-pool server (grpc.server): one hop per request instead of loop -> worker -> loop."""
import sys
sys.path[:0] = ["/work/main/daemon", "/work/main/clients"]
from concurrent import futures
from pathlib import Path
import grpc
from edgeinfer.config import load_config
from edgeinfer.pipeline.model import ServedModel
from edgeinfer.server import converters
from edgeinfer_client._proto.edgeinfer.v1 import inference_pb2 as pb

cfg = load_config(Path(sys.argv[1])); port = sys.argv[2]
m = ServedModel([x for x in cfg.models if x.name == "imagenet"][0], cfg.server, None); m.load()

def infer(request, context):
    item = converters.request_input(request)
    pred = m.predict(item, converters.request_options(request))
    return converters.response(m, request.request_id, pred)

handler = grpc.method_handlers_generic_handler("edgeinfer.v1.Inference", {
    "Infer": grpc.unary_unary_rpc_method_handler(infer, request_deserializer=pb.InferRequest.FromString,
                                                 response_serializer=pb.InferResponse.SerializeToString)})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=cfg.server.workers),
                     options=[("grpc.max_receive_message_length", 1 << 26)])
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port(f"127.0.0.1:{port}")
server.start()
print("ready", flush=True)
server.wait_for_termination()
