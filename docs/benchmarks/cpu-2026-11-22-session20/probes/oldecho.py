import sys
if __name__ == "__main__":
    from edgeinfer.bench.echo import EchoServer
    e = EchoServer(loop="uvloop").start()
    e.respond_with(314)
    print(e.port, e.pid, flush=True)
    sys.stdin.read()
    e.stop()
