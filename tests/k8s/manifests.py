"""Render the soma chart with Helm's own Go library and walk the rendered objects.

`helm-python-sdk` (import `helm_python`) binds Helm v4's SDK through a bundled shared library:
no helm binary, no cluster. Rendering goes through the same code as `helm template`,
values.schema.json included, so a value the schema rejects fails here as it would on install.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "soma"
RELEASE = "soma"
NAMESPACE = "soma"
KUBE_VERSION = "1.30"

# The value sets the chart is tested with: the defaults and the files under charts/soma/ci/.
VALUE_SETS = {
    "default": None,
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
