import sys
if __name__ == "__main__":
    from edgeinfer.bench.echo import EchoServer
    e = EchoServer(loop="uvloop").start()
    print(e.port, e.pid, flush=True)
    sys.stdin.read()
    e.stop()
