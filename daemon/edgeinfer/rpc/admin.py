"""The edgeinfer.v1.Admin servicer: operations on the daemon itself (Reload), converted and delegated."""
from __future__ import annotations

import logging
from typing import Awaitable, Callable

import grpc
from edgeinfer_proto.edgeinfer.v1 import admin_pb2 as pb

from edgeinfer.model.changes import ReloadOutcome
from edgeinfer.rpc.methods import add_service

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Admin"].full_name

_ACTIONS = {
    "added": pb.ModelChange.ACTION_ADDED,
    "removed": pb.ModelChange.ACTION_REMOVED,
    "updated": pb.ModelChange.ACTION_UPDATED,
    "unchanged": pb.ModelChange.ACTION_UNCHANGED,
    "failed": pb.ModelChange.ACTION_FAILED,
}


def reload_response(outcome: ReloadOutcome) -> pb.ReloadResponse:
    return pb.ReloadResponse(
        accepted=outcome.accepted, error=outcome.error, config_path=outcome.config_path,
        needs_restart=outcome.needs_restart, processes=outcome.processes,
        models=[pb.ModelChange(name=c.name, action=_ACTIONS[c.action], detail=c.detail, error=c.error)
                for c in outcome.models])


class AdminServicer:
    """reload: the daemon's reload (the same as on SIGHUP); None where this process cannot reload
    alone (`refusal` then says why, answered as FAILED_PRECONDITION)."""

    def __init__(self, reload: Callable[[], Awaitable[ReloadOutcome]] | None, refusal: str = ""):
        self._reload = reload
        self._refusal = refusal

    async def Reload(self, request, context):
        if self._reload is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, self._refusal)
        return reload_response(await self._reload())


def add_to_server(servicer: AdminServicer, server) -> None:
    handlers = {
        "Reload": grpc.unary_unary_rpc_method_handler(
            servicer.Reload, request_deserializer=pb.ReloadRequest.FromString,
            response_serializer=pb.ReloadResponse.SerializeToString),
    }
    add_service(server, SERVICE_NAME, handlers)  # called rarely: the generic handler only
