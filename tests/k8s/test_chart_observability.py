"""The chart's optional observability pack: a Grafana dashboard ConfigMap for the dashboard sidecar
and a PrometheusRule, both off by default, both querying only metrics soma exports."""

from __future__ import annotations

import json

import pytest

from tests.k8s.manifests import CHART, named, of_kind, promql_expressions, promql_metric_names, render

# The Prometheus exposition names soma exports (counters end in _total; histograms are queried by
# their _bucket series): the dialogue process, the job services, the operator.
_HISTOGRAMS = ["soma_turn_seconds", "soma_time_to_first_token_seconds", "soma_time_per_output_token_seconds"]
EXPORTED_METRICS = {
    "soma_turns_total",
    *(f"{h}{suffix}" for h in _HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")),
    "soma_turns_in_flight",
    "soma_sessions",
    "soma_teacher_tokens_avoided_total",
    "soma_surrogate_fallbacks_total",
    "soma_switches_total",
    "soma_rollbacks_total",
    "soma_adaptations_failed_total",
    "soma_quota_refusals_total",
    "soma_generated_tokens_total",
    "soma_queue_depth",
    "soma_operator_sessions",
}
PACK = {"telemetry": {"grafanaDashboard": {"enabled": True}, "prometheusRule": {"enabled": True}}}


@pytest.fixture(scope="module")
def pack():
    return render(PACK)


def test_both_are_off_by_default(rendered):
    docs = rendered("default")
    assert not of_kind(docs, "PrometheusRule")
    assert not [d for d in of_kind(docs, "ConfigMap") if "grafana_dashboard" in d["metadata"]["labels"]]


def test_the_dashboard_is_a_configmap_for_the_grafana_sidecar(pack):
    configmap = named(pack, "ConfigMap", "soma-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["soma.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "soma.json").read_text())  # the file, unchanged
    assert dashboard["uid"] == "soma"
    assert 6 <= len(dashboard["panels"]) <= 8
    for panel in dashboard["panels"]:
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "namespace"}


def test_the_rules_alert_on_fallbacks_failed_sessions_queue_depth_and_rollbacks(pack):
    (rule,) = of_kind(pack, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(alerts) == {"SomaSurrogateFallbacks", "SomaSessionsFailed", "SomaJobQueueBacklog", "SomaRollbackRate"}
    uses = {name: promql_metric_names([a["expr"]]) for name, a in alerts.items()}
    assert "soma_surrogate_fallbacks_total" in uses["SomaSurrogateFallbacks"]
    assert "soma_sessions" in uses["SomaSessionsFailed"] and 'phase="FAILED"' in alerts["SomaSessionsFailed"]["expr"]
    assert uses["SomaJobQueueBacklog"] == {"soma_queue_depth"}
    assert {"soma_rollbacks_total", "soma_switches_total"} == uses["SomaRollbackRate"]
    for name, alert in alerts.items():
        assert 'namespace="soma"' in alert["expr"], name  # this release's namespace only
        assert alert["labels"]["severity"] and alert["annotations"]["summary"], name
        assert "{{ $value" in alert["annotations"]["description"], name  # Prometheus's template, not Helm's
    assert "> 10" in alerts["SomaJobQueueBacklog"]["expr"]
    tuned = render({"telemetry": {"prometheusRule": {"enabled": True, "queueDepth": 3, "labels": {"release": "kps"}}}})
    (rule,) = of_kind(tuned, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kps"
    backlog = [r for g in rule["spec"]["groups"] for r in g["rules"] if r["alert"] == "SomaJobQueueBacklog"]
    assert "> 3" in backlog[0]["expr"]


def test_every_metric_the_pack_queries_is_one_soma_exports(pack):
    names = promql_metric_names(pack)
    assert names <= EXPORTED_METRICS, names - EXPORTED_METRICS
    # the dashboard shows the serving picture: turns by model, latency, sessions, cost, queues
    assert {
        "soma_turns_total",
        "soma_turn_seconds_bucket",
        "soma_time_to_first_token_seconds_bucket",
        "soma_time_per_output_token_seconds_bucket",
        "soma_turns_in_flight",
        "soma_sessions",
        "soma_teacher_tokens_avoided_total",
        "soma_queue_depth",
    } <= names
    assert len(promql_expressions(pack)) > 10


def test_promql_metric_names_finds_names_not_functions_labels_or_keywords():
    exprs = [
        "histogram_quantile(0.95, sum by (le, served_by) "
        '(rate(soma_bogus_seconds_bucket{namespace="$namespace"}[$__rate_interval])))',
        "sum(rate(a_total[5m])) / on(queue) group_left b > bool 1e-9 unless c offset 1h",
        "label_values(soma_turns_total, namespace)",
    ]
    assert promql_metric_names(exprs) == {"soma_bogus_seconds_bucket", "a_total", "b", "c", "soma_turns_total"}
