"""`edgeinfer bench`: the daemon against its in-process ceiling and the bare gRPC floor.

One run measures three things on the same machine, one after the other, so
their ratios mean something:

  daemon   the real daemon in its own process, driven over gRPC by load
           generator processes (loadgen.py)
  ceiling  the same model, loaded the same way (ModelLoader / ServedModel),
           called directly on threads: no gRPC at all (ceiling.py)
  echo     a bare grpc.aio server that does no work but answers with the
           daemon's message sizes: the transport floor (echo.py)

report.py turns the numbers into Markdown, JSON and PNG plots.
"""
from edgeinfer_bench.stats import Summary, percentile, ratio, summarize

__all__ = ["Summary", "percentile", "ratio", "summarize"]
