"""Several daemons behind one client: gRPC's own round robin, and retries of UNAVAILABLE.

`Client(["10.0.0.5:50051", "10.0.0.6:50051"])` or `Client("dns:///edgeinfer.ns.svc:50051")`
(a Kubernetes headless Service: one A record per pod) make one channel to every server, and
gRPC spreads calls over them in turn (the round_robin policy), skipping a server whose
connection is down. A call answered UNAVAILABLE (a server stopping, restarting, or a model
still loading there) is tried again, up to 3 attempts in all, each on the next server. So is
one answered CANCELLED by the server: a gRPC server that shuts down cancels the calls it had
taken in but not started (tests/clients/test_client_balancing.py saw one in about 1 of 4
stops under load). Retrying both is safe because every edgeinfer call is idempotent: an
inference changes nothing on the server. A call the caller cancels is never retried.

Why gRPC's retry policy (service config) and not a retry loop in the client: the channel
retries inside one call, under the call's own deadline, with a fresh pick of server per attempt,
for unary calls and for streams that have not yet had an answer, in the sync and the asyncio
client alike, with no code in each method. A retry loop would re-pick nothing (the channel
chooses the server) and would have to be written for every call shape.

A single plain "host:port" keeps gRPC's defaults (pick first, no retry policy), as before.
"""
from __future__ import annotations

import ipaddress
import json
import socket
from typing import Sequence, Union

Address = Union[str, Sequence[str]]

RETRY_ATTEMPTS = 3
# A call is retried only while its request still sits in the retry buffer (gRPC's default is
# 256 KiB per call: a 1 MB photo would not be retried). Big enough for the client's message limit.
RETRY_BUFFER_BYTES = 64 * 1024 * 1024

SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{
        # An empty name: every method of every service on the channel.
        "name": [{}],
        "retryPolicy": {
            "maxAttempts": RETRY_ATTEMPTS,
            "initialBackoff": "0.05s",
            "maxBackoff": "1s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
        },
    }],
}


def _host_port(address: str) -> tuple[str, str]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{address!r}: each address of a list must be host:port")
    return host.strip("[]"), port


def _ips(address: str) -> list[tuple[int, str]]:
    """(family, "ip:port") for every address `address` resolves to, once, now."""
    host, port = _host_port(address)
    try:
        ip = ipaddress.ip_address(host)
        infos = [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, str(ip))]
    except ValueError:
        infos = [(fam, sa[0]) for fam, _, _, _, sa in socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
                 if fam in (socket.AF_INET, socket.AF_INET6)]
        if not infos:
            raise ValueError(f"{address!r}: {host!r} resolves to no IP address") from None
    out = []
    for fam, ip in infos:
        item = (fam, f"[{ip}]:{port}" if fam == socket.AF_INET6 else f"{ip}:{port}")
        if item not in out:
            out.append(item)
    return out


def channel_target(address: Address) -> tuple[str, list[tuple[str, object]]]:
    """The gRPC target and the extra channel options for `address`.

    A list of host:port becomes one static `ipv4:` (or `ipv6:`) target naming every server (names
    resolved once, here; for servers that come and go, use a `dns:///` name, which gRPC
    re-resolves). Round robin and the retry policy apply to a list and to a `dns:` target.
    """
    if isinstance(address, str):
        if address.startswith("dns:"):
            return address, balanced_options()
        return address, []
    addresses = list(address)
    if not addresses:
        raise ValueError("no address given")
    if len(addresses) == 1:
        return channel_target(addresses[0])
    resolved = [item for a in addresses for item in _ips(a)]
    v4 = [ip for fam, ip in resolved if fam == socket.AF_INET]
    v6 = [ip for fam, ip in resolved if fam == socket.AF_INET6]
    # One static target has one scheme: IPv4 when any server has an IPv4 address.
    target = "ipv4:" + ",".join(v4) if v4 else "ipv6:" + ",".join(v6)
    return target, balanced_options()


def balanced_options() -> list[tuple[str, object]]:
    return [("grpc.service_config", json.dumps(SERVICE_CONFIG)),
            ("grpc.enable_retries", 1),
            ("grpc.per_rpc_retry_buffer_size", RETRY_BUFFER_BYTES)]
