"""Render the soma chart with Helm's own Go library and walk the rendered objects.

`helm-python-sdk` (import `helm_python`) binds Helm v4's SDK through a bundled shared library:
no helm binary, no cluster. Rendering goes through the same code as `helm template`,
values.schema.json included, so a value the schema rejects fails here as it would on install.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "soma"
RELEASE = "soma"
NAMESPACE = "soma"
KUBE_VERSION = "1.30"

# The value sets the chart is tested with: the defaults (the GPU layout) and the files under
# charts/soma/ci/.
VALUE_SETS = {
    "default": None,
    "cpu": CHART / "ci" / "cpu-values.yaml",
    "gpu": CHART / "ci" / "gpu-values.yaml",
    "external": CHART / "ci" / "external-values.yaml",
    "minimal": CHART / "ci" / "minimal-values.yaml",
}

POD_OWNERS = {"Deployment", "StatefulSet", "Job", "DaemonSet"}


def load_values(name: str) -> dict[str, Any]:
    path = VALUE_SETS[name]
    return yaml.safe_load(path.read_text()) if path else {}


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every object the chart renders for these values (NOTES.txt left out), as dicts."""
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def render_notes(values: dict[str, Any] | None = None) -> str:
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(text for path, text in files.items() if path.endswith("NOTES.txt"))


def crd_documents() -> list[dict[str, Any]]:
    """The objects under crds/, as Helm loads them (installed before the templates)."""
    with helm.Chart.load(CHART) as chart:
        return [doc for crd in chart.crds for doc in yaml.safe_load_all(crd["data"]) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(owner object, pod spec) for every workload that runs pods."""
    for doc in docs:
        if doc["kind"] in POD_OWNERS:
            yield doc, doc["spec"]["template"]["spec"]


def component(doc: dict[str, Any]) -> str:
    return doc["metadata"]["labels"]["app.kubernetes.io/component"]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The container's env entries by name (value or valueFrom)."""
    return {e["name"]: e for e in container.get("env", [])}


def env_values(container: dict[str, Any]) -> dict[str, str]:
    return {name: e["value"] for name, e in env_of(container).items() if "value" in e}


# --- PromQL of the dashboard and the alerts -------------------------------------------------------

# Words of PromQL that are not metric names when they are not followed by "(".
_PROMQL_WORDS = {"and", "or", "unless", "bool", "offset"} | {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
}


def promql_expressions(docs: list[dict[str, Any]]) -> list[str]:
    """Every PromQL expression in the rendered Grafana dashboards (ConfigMaps holding dashboard JSON:
    panel targets and templating queries) and PrometheusRules (alert and record expressions)."""
    exprs: list[str] = []
    for doc in docs:
        if doc["kind"] == "PrometheusRule":
            exprs += [rule["expr"] for group in doc["spec"]["groups"] for rule in group["rules"]]
        elif doc["kind"] == "ConfigMap":
            for text in (doc.get("data") or {}).values():
                try:
                    dashboard = json.loads(text)
                except ValueError:
                    continue
                if isinstance(dashboard, dict) and "panels" in dashboard:
                    exprs += _dashboard_expressions(dashboard)
    return exprs


def _dashboard_expressions(dashboard: dict[str, Any]) -> list[str]:
    exprs = []
    panels = list(dashboard.get("panels", []))
    while panels:
        panel = panels.pop()
        panels += panel.get("panels", [])  # rows
        exprs += [t["expr"] for t in panel.get("targets", []) if t.get("expr")]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        if variable.get("type") == "query" and query:
            exprs.append(query)
    return exprs


def promql_metric_names(docs: list[dict[str, Any]] | Iterable[str]) -> set[str]:
    """The metric names (as exposed, e.g. soma_turns_total, soma_turn_seconds_bucket) that the
    dashboard and the alerts query: `docs` are rendered objects, or PromQL strings.

    A small lexer rather than a PromQL parser: strings, label matchers {...}, ranges [...],
    grouping clauses by/without/on/ignoring (...), Grafana variables and numbers are dropped;
    what remains is a metric name unless it is a keyword or a function (followed by "(").
    Grafana's label_values(metric, label) keeps its first argument only."""
    items = list(docs)
    exprs = [i for i in items if isinstance(i, str)] + promql_expressions([i for i in items if isinstance(i, dict)])
    names: set[str] = set()
    for expr in exprs:
        text = re.sub(r"label_values\(\s*([^,)]*?)\s*(,[^)]*)?\)", r" \1 ", expr)
        text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', " ", text)
        text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
        text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
        text = re.sub(r"\$\{[^}]*\}|\$\w+", " ", text)
        for match in re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", text):
            word, call = match.group(1), match.group(2)
            if not call and word not in _PROMQL_WORDS and not re.fullmatch(r"(?i)inf|nan", word):
                names.add(word)
    return names
