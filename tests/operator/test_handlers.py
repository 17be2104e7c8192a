"""The kopf handlers, run by KopfRunner against kmock, an in-memory Kubernetes API emulator
(not a real API server: see conftest.py). The driver is a scripted fake here."""

from __future__ import annotations

import threading

import kopf
import pytest

from soma_operator.handlers import FINALIZER, kopf_settings, register
from soma_operator.settings import OperatorSettings
from tests.operator.conftest import NAMESPACE, RESOURCE, eventually, running_operator, session_object

pytestmark = pytest.mark.asyncio


class ScriptedDriver:
    """Answers tick() with the report set by the test; records forget()."""

    def __init__(self, report: dict | None):
        self.report = report
        self.ticks: list[tuple[str, float]] = []
        self.forgotten: list[str] = []
        self._lock = threading.Lock()

    def tick(self, session_id: str, now: float) -> dict | None:
        with self._lock:
            self.ticks.append((session_id, now))
            return None if self.report is None else dict(self.report)

    def forget(self, session_id: str) -> None:
        self.forgotten.append(session_id)


def report(phase="WARMUP", step="idle", generation=0, uri=None, turns=0, activity=None, reason=""):
    return {
        "phase": phase,
        "generation": generation,
        "attempts": 0,
        "step": step,
        "job_id": None,
        "adapter_uri": uri,
        "adapter_sha256": None,
        "last_reason": reason,
        "counters": {"turns": turns, "teacherTurns": turns, "surrogateTurns": 0, "switches": 0, "rollbacks": 0},
        "lastActivity": activity,
    }


def operator(driver, **overrides):
    settings = OperatorSettings(standalone=True, tick_interval_s=0.3, counters_interval_s=3600, error_backoff_s=0.3, **overrides)
    registry = kopf.OperatorRegistry()
    metrics = register(registry, driver, settings, deleter=lambda ns: None)
    return registry, kopf_settings(settings), metrics


async def test_create_writes_the_initial_status(k8s):
    driver = ScriptedDriver(report())
    registry, ks, metrics = operator(driver)
    k8s.objects[RESOURCE, NAMESPACE, "s1"] = session_object("s1", "Sess_1")
    async with running_operator(k8s, registry, ks):
        status = await eventually(lambda: k8s.objects[RESOURCE, NAMESPACE, "s1"].get("status", {}).get("phase"))
    obj = k8s.objects[RESOURCE, NAMESPACE, "s1"]
    print(dict(obj))
    assert status == "WARMUP"
    assert FINALIZER in obj["metadata"]["finalizers"]
