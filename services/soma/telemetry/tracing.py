"""OpenTelemetry tracing: a tracer provider, the gRPC server/client interceptors that
propagate trace context through gRPC metadata, and an optional OTLP exporter."""

from __future__ import annotations

import logging

import grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import client_interceptor, server_interceptor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from soma import __version__

log = logging.getLogger("soma.telemetry")
_provider: TracerProvider | None = None


def setup_tracing(service_name: str, otlp_endpoint: str = "") -> TracerProvider:
    """Install the process's tracer provider once; export over OTLP/gRPC when configured."""
    global _provider
    if _provider is not None:
        return _provider
    resource = Resource.create({"service.name": service_name, "service.version": __version__})
    provider = TracerProvider(resource=resource)
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
        log.info("exporting traces to %s", otlp_endpoint)
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def shutdown_tracing() -> None:
    if _provider is not None:
        _provider.shutdown()


def tracing_server_interceptor() -> grpc.ServerInterceptor:
    return server_interceptor(tracer_provider=trace.get_tracer_provider())


def traced_channel(address: str, *, max_message_mb: int = 16) -> grpc.Channel:
    """An insecure channel to another soma service that carries the current trace context."""
    options = [
        ("grpc.max_send_message_length", max_message_mb << 20),
        ("grpc.max_receive_message_length", max_message_mb << 20),
    ]
    channel = grpc.insecure_channel(address, options=options)
    return grpc.intercept_channel(channel, client_interceptor(tracer_provider=trace.get_tracer_provider()))
