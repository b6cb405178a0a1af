"""A bare grpc.aio echo that answers after a delay: the transport's per-request server CPU at the daemon's rate."""
import asyncio, sys, time, concurrent.futures as cf
import grpc, uvloop
MODE = sys.argv[1]; DELAY = float(sys.argv[2])
pool = cf.ThreadPoolExecutor(8)
def handler_factory():
    async def echo(request, context):
        if MODE == "none":
            return request
        if MODE == "sleep":
            await asyncio.sleep(DELAY)
        elif MODE == "hop":
            await asyncio.sleep(DELAY)
            await asyncio.get_running_loop().run_in_executor(pool, int)
        elif MODE == "thread":
            await asyncio.get_running_loop().run_in_executor(pool, time.sleep, DELAY)
        return b"x" * 90
    return grpc.unary_unary_rpc_method_handler(echo)
class H(grpc.GenericRpcHandler):
    def service(self, d):
        return handler_factory()
async def main():
    s = grpc.aio.server(options=[("grpc.max_receive_message_length", 1 << 26)])
    s.add_generic_rpc_handlers((H(),))
    s.add_insecure_port("127.0.0.1:50051")
    await s.start()
    await s.wait_for_termination()
uvloop.install(); asyncio.run(main())
