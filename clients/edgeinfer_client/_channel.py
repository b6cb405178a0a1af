"""Channels to the daemon: plain text, TLS (system roots or a site CA), mutual TLS, bearer tokens."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Union

import grpc

from .errors import ClientError

MAX_MESSAGE = 64 * 1024 * 1024

PemSource = Union[str, Path, bytes, None]


@dataclass
class TlsOptions:
    """TLS settings: each of ca, cert and key is a PEM file path or the PEM bytes.

    ca: the CA that signed the daemon's certificate (None: the system's trust roots).
    cert, key: this client's certificate and key, for daemons that require them (mutual TLS).
    server_name: the name to check the daemon's certificate against, when the address is not
        one of the names it carries (e.g. an IP address not in the certificate).
    """

    ca: PemSource = None
    cert: PemSource = None
    key: PemSource = None
    server_name: Optional[str] = None


TlsLike = Union[bool, TlsOptions, Mapping[str, object], None]


def channel_options() -> list[tuple[str, object]]:
    return [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]


def _pem(value: PemSource, what: str) -> Optional[bytes]:
    if value is None or isinstance(value, bytes):
        return value
    try:
        return Path(value).read_bytes()
    except OSError as exc:
        raise ClientError("INVALID_ARGUMENT", f"cannot read TLS {what} {value}: {exc.strerror or exc}") from None


def tls_options(tls: TlsLike) -> Optional[TlsOptions]:
    """None for plain text; TlsOptions otherwise (True: system roots; a dict: TlsOptions' fields)."""
    if tls is None or tls is False:
        return None
    if tls is True:
        return TlsOptions()
    if isinstance(tls, TlsOptions):
        return tls
    if isinstance(tls, Mapping):
        unknown = set(tls) - {"ca", "cert", "key", "server_name"}
        if unknown:
            raise ClientError("INVALID_ARGUMENT", f"tls: unknown keys {sorted(unknown)} (ca, cert, key, server_name)")
        return TlsOptions(**tls)
    raise ClientError("INVALID_ARGUMENT", f"tls: expected True, a dict or TlsOptions, got {type(tls).__name__}")


def make_channel(address, tls: TlsLike, aio: bool = False):
    """A grpc (or grpc.aio) channel to `address` (one daemon or several: balancing.py) with the TLS
    settings `tls`."""
    from .balancing import channel_target

    opts = tls_options(tls)
    target, balancing = channel_target(address)
    options = channel_options() + balancing
    mod = grpc.aio if aio else grpc
    if opts is None:
        return mod.insecure_channel(target, options=options)
    if (opts.cert is None) != (opts.key is None):
        raise ClientError("INVALID_ARGUMENT", "tls: a client certificate needs its key, and the key its certificate")
    creds = grpc.ssl_channel_credentials(root_certificates=_pem(opts.ca, "CA"),
                                         private_key=_pem(opts.key, "key"),
                                         certificate_chain=_pem(opts.cert, "certificate"))
    if opts.server_name:
        options.append(("grpc.ssl_target_name_override", opts.server_name))
    return mod.secure_channel(target, creds, options=options)


def token_metadata(token: Optional[str]) -> Optional[tuple[tuple[str, str], ...]]:
    """The metadata a bearer token travels in (sent by us on every call, over TLS or loopback)."""
    return (("authorization", f"Bearer {token}"),) if token else None
