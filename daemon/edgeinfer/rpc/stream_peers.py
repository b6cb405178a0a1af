"""Streams spread over the processes of one daemon ([server] processes > 1).

One interpreter carries only so many streams (docs/performance.md, "Stream density on an H100"),
so with several processes each pulls a share of the `[[streams]]`: stream number i, in config
order, belongs to process i mod N. Clients still see one daemon. A process asked about a stream
it does not pull (ListStreams, WatchStream, GetSnapshot) relays the call to the process that
does, over that process's private Unix socket, in a folder only the daemon's user can open.
Relayed calls carry a token that only these processes know (the [auth] role checks still apply
to the caller at the process it reached) and a header that stops the relay going further.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import grpc
from edgeinfer_proto.edgeinfer.v1 import streams_pb2_grpc as spb_grpc

PEER_HEADER = "x-edgeinfer-peer"


@dataclass
class StreamPeers:
    index: int       # this process
    count: int       # the processes that pull streams
    directory: str   # the private folder of their sockets
    token: str       # the bearer token of relayed calls
    _stubs: dict = field(default_factory=dict, repr=False)
    _channels: list = field(default_factory=list, repr=False)

    def address(self, index: Optional[int] = None) -> str:
        """The Unix socket of process `index` (this one by default)."""
        return "unix:" + os.path.join(self.directory, f"{self.index if index is None else index}.sock")

    def owner(self, position: int) -> int:
        return position % self.count

    def mine(self, streams: Sequence) -> list:
        """The streams of the config this process pulls."""
        return [s for i, s in enumerate(streams) if self.owner(i) == self.index]

    def owner_of(self, name: str, streams: Sequence) -> Optional[int]:
        """The process that pulls the stream named `name`; None if no stream has that name."""
        for i, s in enumerate(streams):
            if s.name == name:
                return self.owner(i)
        return None

    def others(self) -> list[int]:
        return [i for i in range(self.count) if i != self.index]

    def stub(self, index: int) -> spb_grpc.StreamsStub:
        """A Streams stub to process `index` (one channel each, made on first use in the running loop)."""
        stub = self._stubs.get(index)
        if stub is None:
            channel = grpc.aio.insecure_channel(self.address(index))
            self._channels.append(channel)
            stub = self._stubs[index] = spb_grpc.StreamsStub(channel)
        return stub

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"), (PEER_HEADER, "1"))

    @staticmethod
    def relayed(context) -> bool:
        """Whether this call came from another process of the daemon (answer it locally)."""
        return any(key == PEER_HEADER for key, _ in (context.invocation_metadata() or ()))

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        self._channels.clear()
        self._stubs.clear()
