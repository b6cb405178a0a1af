"""The edgeinfer.v1.Streams servicer: lists streams, streams their results, serves snapshots."""
from __future__ import annotations

import asyncio

from edgeinfer_proto.edgeinfer.v1 import streams_pb2 as spb
from edgeinfer_proto.edgeinfer.v1 import streams_pb2_grpc as spb_grpc

from edgeinfer.rpc import converters
from edgeinfer.rpc.errors import abort_with, translate_errors
from edgeinfer.rpc.methods import GenericOnly
from edgeinfer.streams.manager import StreamManager, StreamResult, StreamStats, encode_snapshot

SERVICE_NAME = spb.DESCRIPTOR.services_by_name["Streams"].full_name

STATES = {
    "connecting": spb.STREAM_STATE_CONNECTING,
    "live": spb.STREAM_STATE_LIVE,
    "stalled": spb.STREAM_STATE_STALLED,
    "reconnecting": spb.STREAM_STATE_RECONNECTING,
    "stopped": spb.STREAM_STATE_STOPPED,
}


def stream_info(s: StreamStats) -> spb.StreamInfo:
    return spb.StreamInfo(
        name=s.name, model=s.model, source=s.source, state=STATES[s.state], state_reason=s.state_reason,
        fps_in=s.fps_in, fps_out=s.fps_out, frames_in=s.frames_in, frames_processed=s.frames_processed,
        frames_dropped=s.frames_dropped, frames_skipped=s.frames_skipped, frames_failed=s.frames_failed,
        reconnects=s.reconnects, last_error=s.last_error, decode=s.decode, width=s.width, height=s.height,
        subscribers=s.subscribers)


class StreamsServicer(spb_grpc.StreamsServicer):
    def __init__(self, manager: StreamManager, registry):
        self.manager = manager
        self.registry = registry

    def _result(self, r: StreamResult, dropped: int) -> spb.StreamResult:
        model = self.registry.get(self.manager.get(r.stream).cfg.model)
        return spb.StreamResult(stream=r.stream, frame=r.frame.index, timestamp=r.frame.timestamp,
                                response=converters.response(model, str(r.frame.index), r.prediction),
                                latency_s=r.latency_s, dropped=dropped)

    @translate_errors
    async def ListStreams(self, request, context):
        return spb.ListStreamsResponse(streams=[stream_info(s) for s in self.manager.stats()])

    async def WatchStream(self, request, context):
        try:
            stream = self.manager.get(request.name)
        except Exception as exc:  # noqa: BLE001 - becomes the call's status
            await abort_with(context, exc)
            return
        sub = stream.subscribe(request.queue_size or 64)
        try:
            while True:
                result = await sub.get()
                if result is None:  # the daemon is stopping
                    return
                yield self._result(result, sub.dropped)
        finally:
            stream.unsubscribe(sub)

    @translate_errors
    async def GetSnapshot(self, request, context):
        stream = self.manager.get(request.name)
        frame, result = stream.snapshot(request.draw_boxes)
        jpeg = await asyncio.get_running_loop().run_in_executor(None, encode_snapshot, frame, result)
        w, h = frame.size
        return spb.Snapshot(stream=stream.name, frame=frame.index, timestamp=frame.timestamp, jpeg=jpeg,
                            width=w, height=h)


def add_to_server(servicer: StreamsServicer, server) -> None:
    """Serve edgeinfer.v1.Streams through generic handlers only (rarely called: rpc/methods.py)."""
    spb_grpc.add_StreamsServicer_to_server(servicer, GenericOnly(server))
