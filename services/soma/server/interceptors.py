"""A server interceptor that maps errors to gRPC status codes and records RPC metrics.

Both jobs need to see how a handler ended, for unary and streaming handlers alike, so they
share one wrapper around the handler's behaviour.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import grpc

from soma.errors import SomaError
from soma.telemetry.metrics import GRPC_REQUESTS, GRPC_SECONDS

log = logging.getLogger("soma.server")


def _split(method: str) -> tuple[str, str]:
    # "/soma.v1.DialogueService/Chat" -> ("soma.v1.DialogueService", "Chat")
    _, service, name = method.split("/", 2)
    return service, name


def _abort_for(exc: BaseException, context: grpc.ServicerContext, method: str) -> NoReturn:
    already = context.code() if hasattr(context, "code") else None
    if isinstance(already, grpc.StatusCode) and already is not grpc.StatusCode.OK:
        raise exc  # the handler aborted the call itself; keep its status
    if isinstance(exc, SomaError):
        context.abort(exc.code, str(exc))
    ref = uuid.uuid4().hex[:12]
    log.exception("unhandled error in %s (ref %s)", method, ref)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log, ref {ref}")
    raise AssertionError("unreachable")  # context.abort always raises


def _status_of(exc: BaseException) -> grpc.StatusCode:
    return exc.code if isinstance(exc, SomaError) else grpc.StatusCode.INTERNAL


def _code_of(context: grpc.ServicerContext, default: grpc.StatusCode) -> grpc.StatusCode:
    code = context.code() if hasattr(context, "code") else None
    return code if isinstance(code, grpc.StatusCode) else default


class StatusAndMetricsInterceptor(grpc.ServerInterceptor):
    """Turns SomaError into its status code, hides unexpected errors, counts every RPC."""

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None or not details.method.startswith("/soma."):
            return handler
        service, name = _split(details.method)

        def record(code: grpc.StatusCode, started: float) -> None:
            GRPC_REQUESTS.labels(service, name, code.name).inc()
            GRPC_SECONDS.labels(service, name).observe(time.perf_counter() - started)

        if handler.unary_unary:
            inner = handler.unary_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                started = time.perf_counter()
                try:
                    response = inner(request, context)
                except Exception as exc:  # noqa: BLE001 - mapped to a status below
                    record(_code_of(context, _status_of(exc)), started)
                    _abort_for(exc, context, details.method)
                record(_code_of(context, grpc.StatusCode.OK), started)
                return response

            return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)

        if handler.unary_stream:
            inner_stream = handler.unary_stream

            def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                started = time.perf_counter()
                try:
                    yield from inner_stream(request, context)
                except GeneratorExit:
                    record(grpc.StatusCode.CANCELLED, started)
                    raise
                except Exception as exc:  # noqa: BLE001 - mapped to a status below
                    record(_code_of(context, _status_of(exc)), started)
                    _abort_for(exc, context, details.method)
                record(_code_of(context, grpc.StatusCode.OK), started)

            return grpc.unary_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer
            )
        return handler
