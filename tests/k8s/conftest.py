"""Fixtures of the Kubernetes packaging tests: the chart rendered once per value set."""

from __future__ import annotations

import pytest

from tests.k8s.manifests import VALUE_SETS, load_values, render


@pytest.fixture(scope="session")
def rendered():
    """rendered(name) -> the objects of value set `name` ("default", "gpu", "external", "minimal")."""
    cache: dict[str, list] = {}

    def get(name: str) -> list:
        if name not in cache:
            assert name in VALUE_SETS, name
            cache[name] = render(load_values(name))
        return cache[name]

    return get
