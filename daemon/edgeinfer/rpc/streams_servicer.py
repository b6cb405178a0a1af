"""The edgeinfer.v1.Streams servicer: lists streams, streams their results, serves snapshots.

With several processes (rpc/stream_peers.py) it answers for every configured stream: for a stream
another process pulls it relays the call there, and ListStreams gathers every process's list."""
from __future__ import annotations

import asyncio
import logging
from typing import Callable, Optional, Sequence

import grpc
from edgeinfer_proto.edgeinfer.v1 import streams_pb2 as spb
from edgeinfer_proto.edgeinfer.v1 import streams_pb2_grpc as spb_grpc

from edgeinfer.rpc import converters
from edgeinfer.rpc.errors import abort_with, translate_errors
from edgeinfer.errors import StreamNotFound
from edgeinfer.rpc.methods import GenericOnly
from edgeinfer.rpc.stream_peers import StreamPeers
from edgeinfer.streams.manager import StreamManager, StreamResult, StreamStats, encode_snapshot

log = logging.getLogger(__name__)

# How long ListStreams waits for another process's list before reporting its streams unanswered.
PEER_LIST_TIMEOUT_S = 5.0

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
    """`peers` and `configured` (the whole [[streams]] list, in config order) where the streams are
    spread over several processes; without them this process pulls every stream."""

    def __init__(self, manager: StreamManager, registry, peers: Optional[StreamPeers] = None,
                 configured: Callable[[], Sequence] = lambda: ()):
        self.manager = manager
        self.registry = registry
        self.peers = peers
        self.configured = configured

    def _result(self, r: StreamResult, dropped: int) -> spb.StreamResult:
        model = self.registry.get(self.manager.get(r.stream).cfg.model)
        return spb.StreamResult(stream=r.stream, frame=r.frame.index, timestamp=r.frame.timestamp,
                                response=converters.response(model, str(r.frame.index), r.prediction),
                                latency_s=r.latency_s, dropped=dropped)

    def _owner(self, name: str, context) -> Optional[int]:
        """The other process that pulls stream `name`, or None: answer here (this process pulls it,
        the call was relayed already, or no stream has that name)."""
        if self.peers is None or StreamPeers.relayed(context) or self.manager.has(name):
            return None
        owner = self.peers.owner_of(name, self.configured())
        if owner is None:
            known = ", ".join(sorted(s.name for s in self.configured())) or "none are configured"
            raise StreamNotFound(f"no stream named {name!r} (streams: {known})")
        return None if owner == self.peers.index else owner

    @translate_errors
    async def ListStreams(self, request, context):
        infos = [stream_info(s) for s in self.manager.stats()]
        if self.peers is not None and not StreamPeers.relayed(context):
            others = self.peers.others()
            answers = await asyncio.gather(*(self.peers.stub(i).ListStreams(
                request, metadata=self.peers.metadata(), timeout=PEER_LIST_TIMEOUT_S) for i in others),
                return_exceptions=True)
            configured = list(self.configured())
            for i, answer in zip(others, answers):
                if isinstance(answer, BaseException):
                    reason = answer.details() if isinstance(answer, grpc.aio.AioRpcError) else str(answer)
                    log.warning("ListStreams: process %d did not answer: %s", i, reason)
                    infos += [spb.StreamInfo(name=s.name, model=s.model, state=spb.STREAM_STATE_STOPPED,
                                             state_reason=f"process {i}, which pulls this stream, did not "
                                                          f"answer: {reason}")
                              for n, s in enumerate(configured) if self.peers.owner(n) == i]
                else:
                    infos += list(answer.streams)
            order = {s.name: n for n, s in enumerate(configured)}
            infos.sort(key=lambda info: order.get(info.name, len(order)))
        return spb.ListStreamsResponse(streams=infos)

    async def WatchStream(self, request, context):
        try:
            owner = self._owner(request.name, context)
            if owner is None:
                stream = self.manager.get(request.name)
        except Exception as exc:  # noqa: BLE001 - becomes the call's status
            await abort_with(context, exc)
            return
        if owner is not None:
            call = self.peers.stub(owner).WatchStream(request, metadata=self.peers.metadata())
            try:
                async for item in call:
                    yield item
            except grpc.aio.AioRpcError as err:
                await context.abort(err.code(), err.details())
            finally:
                call.cancel()
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
        owner = self._owner(request.name, context)
        if owner is not None:
            try:
                return await self.peers.stub(owner).GetSnapshot(request, metadata=self.peers.metadata(),
                                                                timeout=context.time_remaining())
            except grpc.aio.AioRpcError as err:
                await context.abort(err.code(), err.details())
        stream = self.manager.get(request.name)
        frame, result = stream.snapshot(request.draw_boxes)
        jpeg = await asyncio.get_running_loop().run_in_executor(None, encode_snapshot, frame, result)
        w, h = frame.size
        return spb.Snapshot(stream=stream.name, frame=frame.index, timestamp=frame.timestamp, jpeg=jpeg,
                            width=w, height=h)


def add_to_server(servicer: StreamsServicer, server) -> None:
    """Serve edgeinfer.v1.Streams through generic handlers only (rarely called: rpc/methods.py)."""
    spb_grpc.add_StreamsServicer_to_server(servicer, GenericOnly(server))
