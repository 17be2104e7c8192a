"""Prometheus metrics of a soma process, in the default registry."""

from __future__ import annotations

import prometheus_client

GRPC_REQUESTS = prometheus_client.Counter(
    "soma_grpc_requests",
    "gRPC requests handled, by service, method and status code.",
    ["service", "method", "code"],
)
GRPC_SECONDS = prometheus_client.Histogram(
    "soma_grpc_request_seconds",
    "gRPC handler wall time.",
    ["service", "method"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
TURNS = prometheus_client.Counter("soma_turns", "Dialogue turns served, by model role.", ["served_by"])
GENERATED_TOKENS = prometheus_client.Counter(
    "soma_generated_tokens", "Completion tokens generated, by model role.", ["role"]
)
PROMPT_TOKENS = prometheus_client.Counter("soma_prompt_tokens", "Prompt tokens processed, by model role.", ["role"])
SESSIONS_OPEN = prometheus_client.Counter("soma_sessions_opened", "Sessions opened.")
SESSIONS_CLOSED = prometheus_client.Counter("soma_sessions_closed", "Sessions closed.")


def start_metrics_server(port: int, host: str = "0.0.0.0") -> None:
    """Serve /metrics on its own port (0 = off)."""
    if port:
        prometheus_client.start_http_server(port, addr=host)


ADAPTER_CACHE = prometheus_client.Counter(
    "soma_adapter_cache", "Surrogate adapter lookups by result (hit, miss, error).", ["result"]
)
QUOTA_REFUSALS = prometheus_client.Counter(
    "soma_quota_refusals",
    "Dialogue API calls refused with RESOURCE_EXHAUSTED by a quota, by the quota's setting (quotas.*).",
    ["limit"],
)
SURROGATE_FALLBACKS = prometheus_client.Counter(
    "soma_surrogate_fallbacks",
    "Switched-session turns the teacher served because the surrogate or its adapter failed, by cause.",
    ["reason"],
)
SWITCHES = prometheus_client.Counter("soma_switches", "Sessions handed from the teacher to their adapted surrogate.")
ROLLBACKS = prometheus_client.Counter("soma_rollbacks", "Sessions rolled back to the teacher by the drift monitor.")
ADAPTATIONS_FAILED = prometheus_client.Counter(
    "soma_adaptations_failed", "Sessions whose adaptation gave up (FAILED; the teacher keeps serving)."
)
ADAPTATION_SECONDS = prometheus_client.Histogram(
    "soma_adaptation_seconds",
    "Wall time of each adaptation stage as the session saw it (mining, training, gate).",
    ["stage"],
    buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1200, 3600),
)
