"""Prometheus metrics of the operator, in a registry of their own.

Kept out of prometheus_client's default registry so the operator's /metrics shows only the
control loop, and so tests can create the handlers many times without duplicate collectors.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from soma.session.records import Phase


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "soma_operator_reconciles_total", "Ticks that ran the adaptation driver.", registry=self.registry
        )
        self.ticks_failed = Counter(
            "soma_operator_ticks_failed_total",
            "Ticks whose driver call raised (retried after a backoff).",
            registry=self.registry,
        )
        self.status_patches = Counter(
            "soma_operator_status_patches_total",
            "Status patches written, by cause.",
            ["cause"],
            registry=self.registry,
        )
        self.ttl_deletions = Counter(
            "soma_operator_ttl_deletions_total",
            "SomaSessions deleted because their TTL expired.",
            registry=self.registry,
        )
        self.cleanups = Counter(
            "soma_operator_cleanups_total",
            "Finalizer runs (driver.forget), by result.",
            ["result"],
            registry=self.registry,
        )
        self.sessions = Gauge(
            "soma_operator_sessions",
            "SomaSessions seen by this operator, by phase.",
            ["phase"],
            registry=self.registry,
        )
        self._phases: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()  # ticks run on kopf's thread pool
        for phase in Phase:
            self.sessions.labels(phase.value).set(0)

    def track(self, key: tuple[str, str], phase: str | None) -> None:
        """Record an object's phase (None: the object is gone) and refresh the by-phase gauge."""
        with self._lock:
            if phase is None:
                self._phases.pop(key, None)
            else:
                self._phases[key] = phase
            counts = {p.value: 0 for p in Phase}
            for value in self._phases.values():
                counts[value] = counts.get(value, 0) + 1
            for value, count in counts.items():
                self.sessions.labels(value).set(count)

    def serve(self, port: int, host: str = "0.0.0.0"):
        """Serve /metrics on `port` from a daemon thread (0: not at all); returns (server, thread)."""
        if not port:
            return None
        return start_http_server(port, addr=host, registry=self.registry)
