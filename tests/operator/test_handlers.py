"""The kopf handlers, run by KopfRunner against kmock, an in-memory Kubernetes API emulator
(not a real API server: see conftest.py). The driver is a scripted fake; the cleanup test uses
one built on the real stores (a moto S3 server, SQLite)."""

from __future__ import annotations

import asyncio
import threading
import time

import kopf
import pytest
from kubernetes import client

from soma.k8s.session_resource import SessionResources
from soma_operator.handlers import FINALIZER, kopf_settings, register
from soma_operator.settings import OperatorSettings
from tests.operator.conftest import NAMESPACE, RESOURCE, eventually, running_operator, session_object

pytestmark = pytest.mark.asyncio


class ScriptedDriver:
    """Answers tick() with the report the test sets (or raises `failures` times first)."""

    def __init__(self, report: dict | None, failures: int = 0):
        self.report = report
        self.failures = failures
        self.ticks = 0
        self.forgotten: list[str] = []
        self._lock = threading.Lock()

    def tick(self, session_id: str, now: float) -> dict | None:
        with self._lock:
            self.ticks += 1
            if self.failures:
                self.failures -= 1
                raise ConnectionError("session store unreachable")
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


def api_for(k8s) -> client.CustomObjectsApi:
    """The `kubernetes` client, pointed at the emulator."""
    config = client.Configuration()
    config.host = str(k8s.url).rstrip("/")
    return client.CustomObjectsApi(client.ApiClient(config))


def operator(k8s, driver, **overrides):
    values = dict(standalone=True, tick_interval_s=0.2, counters_interval_s=3600, error_backoff_s=0.2)
    settings = OperatorSettings(**{**values, **overrides})
    registry = kopf.OperatorRegistry()
    api = api_for(k8s)
    metrics = register(registry, driver, settings, deleter=lambda ns: SessionResources(ns, api=api))
    return registry, kopf_settings(settings), metrics


def stored(k8s, name):
    """The object as the emulator holds it now; None when never created or deleted."""
    try:
        obj = k8s.objects[RESOURCE, NAMESPACE, name]
    except KeyError:
        return None
    return None if obj.deleted else obj


def status_of(k8s, name):
    obj = stored(k8s, name)
    return dict((obj.get("status") if obj is not None else None) or {})


def gone(k8s, name):
    return stored(k8s, name) is None


def status_patches(k8s, name):
    """The status PATCH requests the emulator received for `name` (kmock's request filter)."""
    return [r for r in k8s["patch"] if r.name == name and r.subresource == "status"]


def condition(status, kind):
    return next(c for c in status["conditions"] if c["type"] == kind)


async def test_create_writes_the_initial_status(k8s):
    driver = ScriptedDriver(report())
    registry, ks, _ = operator(k8s, driver)
    k8s.objects[RESOURCE, NAMESPACE, "s1"] = session_object("s1", "Sess_1")
    async with running_operator(k8s, registry, ks):
        status = await eventually(lambda: status_of(k8s, "s1").get("phase") and status_of(k8s, "s1"))
        await eventually(lambda: driver.ticks >= 2)
    assert status["phase"] == "WARMUP" and status["step"] == "idle" and status["adapterGeneration"] == 0
    assert (condition(status, "Adapted")["status"], condition(status, "Adapted")["reason"]) == ("False", "WarmingUp")
    assert condition(status, "Failed")["status"] == "False"
    assert FINALIZER in k8s.objects[RESOURCE, NAMESPACE, "s1"]["metadata"]["finalizers"]


async def test_a_phase_change_is_patched_with_its_condition(k8s):
    driver = ScriptedDriver(report())
    registry, ks, metrics = operator(k8s, driver)
    k8s.objects[RESOURCE, NAMESPACE, "s2"] = session_object("s2", "s2")
    async with running_operator(k8s, registry, ks):
        await eventually(lambda: status_of(k8s, "s2").get("phase") == "WARMUP")
        driver.report = report("SURROGATE", "idle", 1, uri="s3://adapters/s2/1", reason="gate accepted generation 1")
        status = await eventually(lambda: status_of(k8s, "s2").get("phase") == "SURROGATE" and status_of(k8s, "s2"))
        driver.report = report("FAILED", "idle", 3, reason="giving up after 3 attempts")
        failed = await eventually(lambda: status_of(k8s, "s2").get("phase") == "FAILED" and status_of(k8s, "s2"))
    assert status["adapterUri"] == "s3://adapters/s2/1" and status["adapterGeneration"] == 1
    adapted = condition(status, "Adapted")
    assert (adapted["status"], adapted["reason"], adapted["message"]) == (
        "True",
        "GateAccepted",
        "gate accepted generation 1",
    )
    assert (condition(failed, "Failed")["status"], condition(failed, "Failed")["reason"]) == (
        "True",
        "AttemptsExhausted",
    )
    assert condition(failed, "Adapted")["status"] == "False"
    assert metrics.status_patches.labels("change")._value.get() >= 2


async def test_unchanged_state_patches_nothing(k8s):
    driver = ScriptedDriver(report("ADAPTING", "mining", 1))
    registry, ks, metrics = operator(k8s, driver)
    k8s.objects[RESOURCE, NAMESPACE, "s3"] = session_object("s3", "s3")
    async with running_operator(k8s, registry, ks):
        await eventually(lambda: status_of(k8s, "s3").get("phase") == "ADAPTING")
        ticks, patches = driver.ticks, len(status_patches(k8s, "s3"))
        await eventually(lambda: driver.ticks >= ticks + 5)
        assert len(status_patches(k8s, "s3")) == patches
    assert metrics.reconciles._value.get() >= 5


async def test_counters_are_written_at_most_once_per_interval(k8s):
    """Turns grow on every tick; with an hour's cadence only the first tick writes them."""
    driver = ScriptedDriver(report("WARMUP", turns=1, activity=time.time()))
    registry, ks, _ = operator(k8s, driver)
    k8s.objects[RESOURCE, NAMESPACE, "s4"] = session_object("s4", "s4")
    async with running_operator(k8s, registry, ks):
        await eventually(lambda: status_of(k8s, "s4").get("counters", {}).get("turns") == 1)
        for turns in range(2, 6):
            driver.report = report("WARMUP", turns=turns, activity=time.time())
            await eventually(lambda t=turns: driver.ticks >= t + 2)
        assert status_of(k8s, "s4")["counters"]["turns"] == 1
        driver.report = report("ADAPTING", "mining", 1, turns=6, activity=time.time())  # a change carries them
        await eventually(lambda: status_of(k8s, "s4").get("counters", {}).get("turns") == 6)


async def test_a_failing_tick_is_retried_after_the_backoff(k8s):
    driver = ScriptedDriver(report("ADAPTING", "training", 1), failures=2)
    registry, ks, metrics = operator(k8s, driver)
    k8s.objects[RESOURCE, NAMESPACE, "s5"] = session_object("s5", "s5")
    async with running_operator(k8s, registry, ks):
        await eventually(lambda: status_of(k8s, "s5").get("step") == "training")
    assert metrics.ticks_failed._value.get() == 2


async def test_an_expired_ttl_deletes_the_object_and_the_finalizer_forgets(k8s):
    driver = ScriptedDriver(report("SURROGATE", generation=1, activity=time.time() - 3600))
    registry, ks, metrics = operator(k8s, driver)
    k8s.objects[RESOURCE, NAMESPACE, "old"] = session_object("old", "Old.Session", ttl_seconds=60)
    k8s.objects[RESOURCE, NAMESPACE, "young"] = session_object("young", "young", ttl_seconds=7200)
    async with running_operator(k8s, registry, ks):
        await eventually(lambda: gone(k8s, "old"))
        await asyncio.sleep(0.5)
    assert set(driver.forgotten) == {"Old.Session"}  # kopf runs handlers at least once: forget is idempotent
    assert not gone(k8s, "young")
    assert metrics.ttl_deletions._value.get() == 1


async def test_a_failing_cleanup_keeps_the_object_until_it_succeeds(k8s):
    driver = ScriptedDriver(report())
    calls = []

    def forget(session_id):
        calls.append(session_id)
        if len(calls) < 3:
            raise ConnectionError("adapter store unreachable")

    driver.forget = forget
    registry, ks, metrics = operator(k8s, driver)
    k8s.objects[RESOURCE, NAMESPACE, "s6"] = session_object("s6", "s6")
    api = api_for(k8s)
    async with running_operator(k8s, registry, ks):
        await eventually(lambda: FINALIZER in k8s.objects[RESOURCE, NAMESPACE, "s6"]["metadata"].get("finalizers", []))
        await asyncio.to_thread(
            api.delete_namespaced_custom_object, "soma.dev", "v1alpha1", NAMESPACE, "somasessions", "s6"
        )
        await eventually(lambda: len(calls) >= 1)
        assert not gone(k8s, "s6")  # held by the finalizer while cleanup fails
        await eventually(lambda: gone(k8s, "s6"))
    assert len(calls) >= 3 and set(calls) == {"s6"}
    assert metrics.cleanups.labels("failed")._value.get() == 2
