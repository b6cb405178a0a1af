"""Who may call what: TLS server credentials, bearer tokens and certificate subjects mapped to roles.

Roles: `infer` (edgeinfer.v1.Inference and Streams, KServe v2 inference and metadata) and `admin`
(edgeinfer.v1.Admin, KServe repository load/unload; any method the table below does not name needs
admin too, so a service added later is closed until it is placed here).
Health checks and reflection are open unless `[auth] open_health` / `open_reflection` say otherwise.

Checks run in a grpc.aio server interceptor. Its `handler_call_details` carries the method and the
metadata but not the peer's certificate, so:
- a bearer token (metadata `authorization: Bearer <token>`) is checked in the interceptor itself,
  before the request is even deserialized, and an allowed call gets the original handler back:
  no per-call wrapper on the hot path;
- a call without a token, where `[tls] subject_roles` is set, gets the original behaviour wrapped
  in a check of `context.auth_context()` (the verified client certificate's common name).
A missing or unknown credential answers UNAUTHENTICATED; a known one without the role,
PERMISSION_DENIED. Tokens are stored as SHA-256 digests and compared with hmac.compare_digest
against every configured digest (no early exit).
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from typing import Callable, Optional

import grpc

from edgeinfer.config import AuthConfig, TlsConfig
from edgeinfer.errors import ConfigError

log = logging.getLogger(__name__)

OPEN = ""  # the role of a method anyone may call

# Service prefix -> the role its methods need. "health" and "reflection" become OPEN or "infer"
# by [auth] open_health / open_reflection. Anything not listed needs "admin".
# First match wins: single methods before their service's prefix.
SERVICE_ROLES: tuple[tuple[str, str], ...] = (
    ("/edgeinfer.v1.Inference/", "infer"),
    ("/edgeinfer.v1.Streams/", "infer"),
    ("/edgeinfer.v1.Admin/", "admin"),
    # KServe v2 / Triton: loading and unloading models is an operator's; liveness and readiness
    # are health checks; the rest is inference and metadata.
    ("/inference.GRPCInferenceService/RepositoryModelLoad", "admin"),
    ("/inference.GRPCInferenceService/RepositoryModelUnload", "admin"),
    ("/inference.GRPCInferenceService/ServerLive", "health"),
    ("/inference.GRPCInferenceService/ServerReady", "health"),
    ("/inference.GRPCInferenceService/ModelReady", "health"),
    ("/inference.GRPCInferenceService/", "infer"),
    ("/grpc.health.v1.Health/", "health"),
    ("/grpc.reflection.v1alpha.ServerReflection/", "reflection"),
    ("/grpc.reflection.v1.ServerReflection/", "reflection"),
)


def hash_token(token: str) -> str:
    """The hex SHA-256 stored in [[auth.tokens]] sha256.

    A plain digest, not a salted slow hash: tokens are 256-bit random strings (`edgeinfer token`),
    which no dictionary or brute force reaches, and a slow hash (scrypt, PBKDF2) would cost
    milliseconds on every call."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def required_role(method: str, auth: AuthConfig) -> str:
    for prefix, role in SERVICE_ROLES:
        if method.startswith(prefix):
            if role == "health":
                return OPEN if auth.open_health else "infer"
            if role == "reflection":
                return OPEN if auth.open_reflection else "infer"
            return role
    return "admin"


def _bearer(metadata) -> Optional[str]:
    for key, value in metadata or ():
        if key == "authorization":
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


def _deny(handler: Optional[grpc.RpcMethodHandler], code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler that answers `code` without reading the request (no deserializer: nothing is parsed)."""

    async def refuse(request_or_iterator, context):
        await context.abort(code, message)

    if handler is not None and handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler is not None and handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler is not None and handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


def _guarded(handler: grpc.RpcMethodHandler, check: Callable) -> grpc.RpcMethodHandler:
    """`handler` whose behaviour first runs `check(context)` -> None (allowed) or (code, message)."""
    kw = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.unary_unary is not None or handler.stream_unary is not None:
        inner = handler.unary_unary or handler.stream_unary

        async def unary(request, context):
            denied = check(context)
            if denied is not None:
                await context.abort(*denied)
            return await inner(request, context)

        make = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
        return make(unary, **kw)
    inner = handler.unary_stream or handler.stream_stream

    async def streaming(request, context):
        denied = check(context)
        if denied is not None:
            await context.abort(*denied)
        result = inner(request, context)
        if hasattr(result, "__aiter__"):
            async for item in result:
                yield item
        else:  # a coroutine writing with context.write
            await result

    make = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
    return make(streaming, **kw)


def _common_name(context) -> Optional[str]:
    try:
        names = context.auth_context().get("x509_common_name") or []
    except Exception:  # noqa: BLE001 - no auth context (plain text)
        return None
    return names[0].decode("utf-8", "replace") if names else None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Enforces the role table above (module docstring)."""

    def __init__(self, auth: AuthConfig, tls: TlsConfig, peer_token: Optional[str] = None):
        # peer_token: what sibling processes relaying a Streams call send (rpc/stream_peers.py);
        # it has the infer role, and only the daemon's own processes know it.
        self._peer = (hashlib.sha256(peer_token.encode("utf-8")).digest(), "sibling process",
                      frozenset({"infer"})) if peer_token else None
        self.update(auth, tls)

    def update(self, auth: AuthConfig, tls: TlsConfig) -> None:
        """Take new tokens and subject mappings (config reload); calls already admitted go on."""
        self._auth = auth
        self._tokens = [(bytes.fromhex(t.sha256), t.name, frozenset(t.roles)) for t in auth.tokens]
        if self._peer is not None:
            self._tokens.append(self._peer)
        self._subjects = {cn: frozenset(roles) for cn, roles in tls.subject_roles.items()}
        self._roles: dict[str, str] = {}

    def _role(self, method: str) -> str:
        role = self._roles.get(method)
        if role is None:
            role = required_role(method, self._auth)
            if len(self._roles) < 4096:  # method names come from clients: bound the cache
                self._roles[method] = role
        return role

    def _token(self, token: str) -> Optional[tuple[str, frozenset]]:
        digest = hashlib.sha256(token.encode("utf-8")).digest()
        found = None
        for stored, name, roles in self._tokens:
            if hmac.compare_digest(digest, stored) and found is None:
                found = (name, roles)
        return found

    async def intercept_service(self, continuation, details):
        method = details.method
        role = self._role(method)
        handler = await continuation(details)
        if role == OPEN:
            return handler
        token = _bearer(details.invocation_metadata)
        if token is not None:
            found = self._token(token) if token else None
            if found is None:
                return _deny(handler, grpc.StatusCode.UNAUTHENTICATED, "the bearer token is not valid")
            name, roles = found
            if role in roles:
                return handler
            return _deny(handler, grpc.StatusCode.PERMISSION_DENIED,
                         f"token {name!r} lacks the {role!r} role that {method} needs")
        if self._subjects and handler is not None:
            subjects = self._subjects

            def check(context):
                cn = _common_name(context)
                if cn is None or cn not in subjects:
                    return (grpc.StatusCode.UNAUTHENTICATED,
                            "no credentials: send 'authorization: Bearer <token>' or a client certificate "
                            "whose subject [tls] subject_roles names")
                if role not in subjects[cn]:
                    return (grpc.StatusCode.PERMISSION_DENIED,
                            f"certificate {cn!r} lacks the {role!r} role that {method} needs")
                return None

            return _guarded(handler, check)
        return _deny(handler, grpc.StatusCode.UNAUTHENTICATED,
                     "no credentials: send metadata 'authorization: Bearer <token>'")


def _read(path: str, what: str) -> bytes:
    try:
        return open(path, "rb").read()
    except OSError as exc:
        raise ConfigError(f"[tls] {what}: cannot read {path}: {exc.strerror or exc}") from exc


class ServerTls:
    """The gRPC port's TLS credentials, re-readable: `reload(tls)` reads the files again and the
    next TLS handshake uses them (grpc.dynamic_ssl_server_credentials asks our fetcher on each
    new connection). Whether client certificates are required is fixed when the port is bound."""

    def __init__(self, tls: TlsConfig):
        self.require_client_cert = tls.require_client_cert
        self._lock = threading.Lock()
        self._pending = None
        self._initial = self._configuration(tls)

    @staticmethod
    def _configuration(tls: TlsConfig):
        key, cert = _read(tls.key, "key"), _read(tls.cert, "cert")
        ca = _read(tls.client_ca, "client_ca") if tls.client_ca else None
        try:
            return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)
        except Exception as exc:  # noqa: BLE001 - grpc raises ValueError/TypeError on bad input
            raise ConfigError(f"[tls] cert/key: not usable: {exc}") from exc

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(self._initial, self._fetch,
                                                   require_client_authentication=self.require_client_cert)

    def reload(self, tls: TlsConfig) -> None:
        """Read the certificate, key and client CA again; new connections use them.

        Raises:
            ConfigError: a file is missing or unreadable (the served credentials stay as they were).
        """
        configuration = self._configuration(tls)
        with self._lock:
            self._pending = configuration
        if tls.require_client_cert != self.require_client_cert:
            log.warning("[tls] require_client_cert changes only on restart (now %s)", self.require_client_cert)

    def _fetch(self):
        with self._lock:
            configuration, self._pending = self._pending, None
        return configuration
