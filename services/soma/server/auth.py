"""API keys of the Dialogue API: stored hashed, each bound to a tenant, checked by one interceptor.

A key is sent as gRPC metadata `authorization: Bearer <key>`. The keys file is JSON
{"<sha256 hex of a key>": "<tenant>"}; the keys themselves are never stored server-side. Embedded
mode stays two commands: when the keys file is missing, the first start makes one local key
(tenant `local`), writes it to a 0600 file and the hash to the keys file, and says where.
The API keys guard the Dialogue API only: health and reflection stay open, the internal services
are not on the public port of `all`, and in the cluster layout they take the service token instead
(`ServiceTokenInterceptor`, `server.service_token_file`).
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

from soma.errors import InvalidArgument, Unauthenticated
from soma.telemetry.tracing import SERVICE_TOKEN_HEADER

GUARDED = "/soma.v1.DialogueService/"
LOCAL_TENANT = "local"
_TENANT: contextvars.ContextVar[str | None] = contextvars.ContextVar("soma_tenant", default=None)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def current_tenant() -> str | None:
    """The tenant of the key that authenticated the RPC being served (None: authentication is off)."""
    return _TENANT.get()


class ApiKeys:
    """Hashes of the valid keys and their tenants, read once from the keys file."""

    def __init__(self, by_hash: dict[str, str]):
        self._by_hash = dict(by_hash)

    @classmethod
    def load(cls, path: Path) -> ApiKeys:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read the API keys file {path}: {err}") from None
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and len(k) == 64 and isinstance(v, str) and v for k, v in data.items()
        ):
            raise ValueError(f'{path} must hold a JSON object {{"<sha256 hex of a key>": "<tenant>"}}')
        return cls(data)

    def tenant_of(self, key: str) -> str | None:
        return self._by_hash.get(hash_key(key)) if key else None

    def __len__(self) -> int:
        return len(self._by_hash)


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def ensure_local_key(keys_file: Path, key_file: Path) -> bool:
    """Make the local key when there is no keys file yet; True when one was made."""
    if keys_file.exists():
        return False
    key = "soma-" + secrets.token_urlsafe(32)
    _write_private(key_file, key + "\n")
    _write_private(keys_file, json.dumps({hash_key(key): LOCAL_TENANT}) + "\n")
    return True


def read_key(path: Path) -> str:
    return Path(path).read_text().strip()


class AuthInterceptor(grpc.ServerInterceptor):
    """UNAUTHENTICATED without a known key; otherwise the RPC runs with its tenant (`current_tenant`)."""

    def __init__(self, keys: ApiKeys):
        self.keys = keys

    def _tenant(self, details: Any) -> str:
        header = dict(details.invocation_metadata or ()).get("authorization", "")
        if not header:
            raise Unauthenticated("no API key: send metadata `authorization: Bearer <key>`")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated("malformed authorization metadata: expected `Bearer <key>`")
        tenant = self.keys.tenant_of(key.strip())
        if tenant is None:
            raise Unauthenticated("unknown API key")
        return tenant

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None or not details.method.startswith(GUARDED):
            return handler
        try:
            tenant, refusal = self._tenant(details), None
        except Unauthenticated as err:
            tenant, refusal = None, err
        if handler.unary_unary:
            inner = handler.unary_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                if refusal is not None:
                    raise refusal
                token = _TENANT.set(tenant)
                try:
                    return inner(request, context)
                finally:
                    _TENANT.reset(token)

            return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                if refusal is not None:
                    raise refusal
                token = _TENANT.set(tenant)
                try:
                    yield from inner_stream(request, context)
                finally:
                    _TENANT.reset(token)

            return grpc.unary_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer
            )
        return handler


INTERNAL_SERVICES = (
    "/soma.v1.TeacherService/",
    "/soma.v1.SurrogateService/",
    "/soma.v1.GateService/",
    "/soma.v1.MiningService/",
    "/soma.v1.TrainingService/",
)


class ServiceTokenInterceptor(grpc.ServerInterceptor):
    """The internal services take calls only from soma's own pods: metadata `x-soma-service-token`
    equal to the shared secret (server.service_token_file), else UNAUTHENTICATED."""

    def __init__(self, token: str):
        self._token = token.encode()

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None or not details.method.startswith(INTERNAL_SERVICES):
            return handler
        sent = dict(details.invocation_metadata or ()).get(SERVICE_TOKEN_HEADER, "")
        if hmac.compare_digest(sent.encode(), self._token):
            return handler
        refusal = Unauthenticated(
            f"{details.method.split('/')[1]} is internal: calls need soma's service token ({SERVICE_TOKEN_HEADER})"
        )

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            raise refusal

        def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            raise refusal
            yield  # a generator, like the handler it stands for

        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer
            )
        return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)


_SCOPED = re.compile(r"^t[0-9a-f]{10}\.")


def _scope(tenant: str) -> str:
    return "t" + hashlib.sha256(tenant.encode()).hexdigest()[:10] + "."


def scoped_session_id(tenant: str | None, session_id: str) -> str:
    """The id a tenant's session is stored under: the tenant's scope, then the id it chose. The
    local tenant of embedded mode (and no authentication) keeps ids as they are; ids that look
    scoped are reserved there, so a scoped id can never be taken by another tenant."""
    if tenant is None or tenant == LOCAL_TENANT:
        if _SCOPED.match(session_id):
            raise InvalidArgument(f"session_id {session_id[:40]!r}: ids of the form t<10 hex digits>.… are reserved")
        return session_id
    scoped = _scope(tenant) + session_id
    if len(scoped) > 128:
        raise InvalidArgument(f"session_id is {len(session_id)} characters; the limit is {128 - len(_scope(tenant))}")
    return scoped


def unscoped_session_id(tenant: str | None, stored_id: str) -> str:
    """The id the tenant chose, as it knows its session."""
    if tenant is None or tenant == LOCAL_TENANT:
        return stored_id
    return stored_id.removeprefix(_scope(tenant))
