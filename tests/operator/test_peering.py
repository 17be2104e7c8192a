"""Leader election by kopf peering, against kmock (an in-memory Kubernetes API emulator, not a
real API server): with peering on, the operator works only once its ClusterKopfPeering exists
(the Helm chart installs kopf's peering CRDs and that object), and keeps itself alive in it."""

from __future__ import annotations

import asyncio

import kopf
import pytest

from soma_operator.handlers import kopf_settings, register
from soma_operator.settings import OperatorSettings
from tests.operator.conftest import NAMESPACE, RESOURCE, eventually, running_operator, session_object
from tests.operator.test_handlers import ScriptedDriver, report, status_of

PEERINGS = "kopf.dev/v1/clusterkopfpeerings"


@pytest.mark.asyncio
async def test_peering_gates_the_operator_and_records_it(k8s):
    k8s.resources[PEERINGS] = {"kind": "ClusterKopfPeering", "singular": "clusterkopfpeering", "namespaced": False}
    settings = OperatorSettings(peering="soma-operator", tick_interval_s=0.2, error_backoff_s=0.2)
    assert not settings.standalone  # the default
    driver = ScriptedDriver(report())
    registry = kopf.OperatorRegistry()
    register(registry, driver, settings, deleter=lambda ns: None)
    k8s.objects[RESOURCE, NAMESPACE, "p1"] = session_object("p1", "p1")

    async with running_operator(k8s, registry, kopf_settings(settings), ("--peering", "soma-operator")):
        await asyncio.sleep(1.0)
        assert driver.ticks == 0 and not status_of(k8s, "p1")  # no peering object: paused
        body = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "soma-operator"}}
        response = await k8s.post("/apis/kopf.dev/v1/clusterkopfpeerings", json=body)  # through the API: watched
        assert response.status == 200
        await eventually(lambda: status_of(k8s, "p1").get("phase") == "WARMUP")
    # kopf keeps itself alive in the peering object's status (identity, priority, lifetime), and
    # takes itself out of it when it stops
    assert [r for r in k8s["patch"] if r.name == "soma-operator"]
