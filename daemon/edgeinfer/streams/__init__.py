"""Video streams the daemon pulls itself: sources, live-frame capture, reconnects, fan-out.

Sits between rpc (which exposes it as edgeinfer.v1.Streams) and serving (which it feeds).
"""
