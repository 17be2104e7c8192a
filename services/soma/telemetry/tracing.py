"""OpenTelemetry tracing: a tracer provider, the gRPC server/client interceptors that
propagate trace context through gRPC metadata, and an optional OTLP exporter."""

from __future__ import annotations

import logging

import grpc
import grpc.experimental
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.grpc import server_interceptor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from soma import __version__
from soma.call_metadata import AddMetadata

log = logging.getLogger("soma.telemetry")
_provider: TracerProvider | None = None


def setup_tracing(service_name: str, otlp_endpoint: str = "") -> TracerProvider | None:
    """Install the process's tracer provider once, exporting over OTLP/gRPC.

    Without an endpoint nothing would ever read the spans, so none is installed and the servers
    skip the tracing interceptors altogether (see tracing_enabled): tracing costs nothing when off.
    """
    global _provider
    if _provider is not None or not otlp_endpoint:
        return _provider
    resource = Resource.create({"service.name": service_name, "service.version": __version__})
    provider = TracerProvider(resource=resource)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    log.info("exporting traces to %s", otlp_endpoint)
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def shutdown_tracing() -> None:
    if _provider is not None:
        _provider.shutdown()


def tracing_enabled() -> bool:
    """True once an SDK tracer provider is installed (by setup_tracing, or by a test)."""
    return isinstance(trace.get_tracer_provider(), TracerProvider)


def tracing_server_interceptor() -> grpc.ServerInterceptor:
    return server_interceptor(tracer_provider=trace.get_tracer_provider())


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, base: grpc.ClientCallDetails, metadata: list[tuple[str, str]]):
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


class TraceContextClientInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Puts the current trace context into the call's metadata (W3C traceparent).

    The server side's OpenTelemetry interceptor continues the trace from it. Unlike the
    instrumentation's own client interceptor, this keeps the call object grpc returns, so a
    streaming call can still be cancelled.
    """

    @staticmethod
    def _with_context(details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        if not carrier:
            return details
        return _CallDetails(details, [*(details.metadata or []), *carrier.items()])

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._with_context(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._with_context(client_call_details), request)


SERVICE_TOKEN_HEADER = "x-soma-service-token"


def traced_channel(address: str, *, max_message_mb: int = 16, service_token: str = "") -> grpc.Channel:
    """An insecure channel to another soma service that carries the current trace context (and the
    service token, when the cluster layout sets one)."""
    options = [
        ("grpc.max_send_message_length", max_message_mb << 20),
        ("grpc.max_receive_message_length", max_message_mb << 20),
        # Read streamed responses on the calling thread: saves a thread handoff per message.
        (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
        # a restarted peer is dialled again within seconds, not after minutes of backoff
        ("grpc.max_reconnect_backoff_ms", 5000),
    ]
    if address.startswith("dns:"):
        # every address the name resolves to (a headless Service's pods), turn by turn; a plain
        # host:port keeps pick_first, which reconnects at once when its one peer comes back
        options.append(("grpc.lb_policy_name", "round_robin"))
    channel = grpc.insecure_channel(address, options=options)
    interceptors = [
        *([TraceContextClientInterceptor()] if tracing_enabled() else []),
        *([AddMetadata(SERVICE_TOKEN_HEADER, service_token)] if service_token else []),
    ]
    return grpc.intercept_channel(channel, *interceptors) if interceptors else channel
