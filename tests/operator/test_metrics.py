"""The operator's Prometheus metrics: the by-phase gauge, and /metrics served on its port."""

from __future__ import annotations

import urllib.request

from soma_operator.metrics import OperatorMetrics
from tests.servers import free_port


def _phase(metrics, phase):
    return metrics.sessions.labels(phase)._value.get()


def test_sessions_by_phase_follow_each_object():
    metrics = OperatorMetrics()
    metrics.track(("ns", "a"), "WARMUP")
    metrics.track(("ns", "b"), "WARMUP")
    metrics.track(("ns", "a"), "SURROGATE")
    assert (_phase(metrics, "WARMUP"), _phase(metrics, "SURROGATE")) == (1, 1)
    metrics.track(("ns", "b"), None)  # deleted
    assert (_phase(metrics, "WARMUP"), _phase(metrics, "SURROGATE"), _phase(metrics, "FAILED")) == (0, 1, 0)


def test_metrics_are_served_on_their_port():
    metrics = OperatorMetrics()
    metrics.reconciles.inc(3)
    metrics.track(("ns", "a"), "GATING")
    port = free_port()
    server, thread = metrics.serve(port, host="127.0.0.1")
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        server.shutdown()
        thread.join(5)
    assert "soma_operator_reconciles_total 3.0" in body
    assert 'soma_operator_sessions{phase="GATING"} 1.0' in body
    assert "python_gc" not in body  # its own registry: only the operator's metrics
    assert OperatorMetrics().serve(0) is None
