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
JOBS_REQUEUED = prometheus_client.Counter(
    "soma_jobs_requeued",
    "Adaptation jobs sent again because a worker took them from the queue and never started them "
    "(jobs.requeue_after_s), by queue.",
    ["queue"],
)


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

# what a turn felt like to its client, by who served it (teacher | surrogate)
TURN_SECONDS = prometheus_client.Histogram(
    "soma_turn_seconds",
    "Turn wall time, from the Chat request to the last chunk, by model role.",
    ["served_by"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600),
)
TIME_TO_FIRST_TOKEN = prometheus_client.Histogram(
    "soma_time_to_first_token_seconds",
    "Time from the Chat request to the first chunk of the answer, by model role.",
    ["served_by"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60),
)
TIME_PER_OUTPUT_TOKEN = prometheus_client.Histogram(
    "soma_time_per_output_token_seconds",
    "Decode time per output token after the first, by model role.",
    ["served_by"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
TURNS_IN_FLIGHT = prometheus_client.Gauge("soma_turns_in_flight", "Chat turns being served by this process.")
TEACHER_TOKENS_AVOIDED = prometheus_client.Counter(
    "soma_teacher_tokens_avoided",
    "Teacher tokens not spent because the surrogate served the turn (estimated): prompt = the full-history "
    "prompt the teacher would have read, completion = the answer it would have written.",
    ["kind"],
)


class SessionsByPhase:
    """soma_sessions{phase}: the session store's count per phase when Prometheus scrapes, cached for
    `max_age_s` so a busy scrape interval does not turn into store load (every mode: embedded too)."""

    def __init__(self, store, max_age_s: float = 15.0, clock=None):
        import time

        self.store, self.max_age_s, self.clock = store, max_age_s, clock or time.monotonic
        self._cached: tuple[float, dict] | None = None

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("soma_sessions", "Stored sessions by phase.", labels=["phase"])
        now = self.clock()
        if self._cached is None or now - self._cached[0] > self.max_age_s:
            try:
                self._cached = (now, self.store.count_by_phase())
            except Exception:  # noqa: BLE001 - a store that is down has no count to report
                self._cached = None
        for phase, count in sorted(((p.value, n) for p, n in (self._cached or (0, {}))[1].items())):
            family.add_metric([phase], count)
        yield family


_phase_collector: SessionsByPhase | None = None


def register_sessions_by_phase(store) -> None:
    """One collector per process, following the latest store (tests build several services)."""
    global _phase_collector
    if _phase_collector is None:
        _phase_collector = SessionsByPhase(store)
        prometheus_client.REGISTRY.register(_phase_collector)
    else:
        _phase_collector.store, _phase_collector._cached = store, None
