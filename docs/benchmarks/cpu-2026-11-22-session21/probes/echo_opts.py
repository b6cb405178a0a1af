"""A bare grpc.aio echo with extra server options (argv: port answer_size options-json). Probe, session 21."""
import json, sys
sys.path[:0] = ["/work/main/daemon", "/work/main/clients"]
import grpc, uvloop
from edgeinfer.server.methods import add_service

async def main():
    port, size, extra = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20),
                                      ("grpc.max_send_message_length", 64 << 20), ("grpc.so_reuseport", 0)]
                             + [tuple(x) for x in extra])
    blob = bytes(size)
    async def unary(request, context):
        return blob
    add_service(server, "edgeinfer.bench.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(unary)}, registered=("Unary",))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()

uvloop.run(main())
