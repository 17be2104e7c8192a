"""`python -m soma_operator`: its kopf options and its wiring, without a cluster."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import kopf
import pytest
import yaml

from soma_operator.__main__ import main, run_options
from soma_operator.handlers import FINALIZER
from soma_operator.settings import OperatorSettings
from tests.operator.conftest import NAMESPACE, RESOURCE, eventually, session_object
from tests.operator.test_handlers import ScriptedDriver, gone, report, status_of
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_peering_is_on_by_default_and_cluster_wide():
    options = run_options(OperatorSettings())
    assert options["peering_name"] == "soma-operator" and options["standalone"] is False
    assert options["clusterwide"] is True and "namespaces" not in options
    assert options["liveness_endpoint"] == "http://0.0.0.0:8080/healthz"


def test_standalone_in_one_namespace():
    options = run_options(OperatorSettings(standalone=True, namespace="soma", health_port=0))
    assert options["peering_name"] is None and options["standalone"] is True
    assert options["namespaces"] == ["soma"] and "clusterwide" not in options
    assert options["liveness_endpoint"] is None


def test_main_wires_driver_handlers_and_kopf(monkeypatch):
    monkeypatch.setenv("SOMA_OPERATOR_METRICS_PORT", "0")
    monkeypatch.setenv("SOMA_OPERATOR_TICK_INTERVAL_S", "2.5")
    seen = {}

    def run(**kwargs):
        seen.update(kwargs)

    assert main([], run=run, build_driver=lambda settings: object(), api=object()) == 0
    registry, ks = seen["registry"], seen["settings"]
    assert isinstance(registry, kopf.OperatorRegistry)
    assert ks.persistence.finalizer == FINALIZER and ks.peering.mandatory
    timers = [h for h in registry._spawning.get_all_handlers() if h.id == "tick"]
    assert len(timers) == 1 and timers[0].interval == 2.5


def test_help_documents_the_settings():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "operators"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-m", "soma_operator", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    ).stdout
    assert "SOMA_OPERATOR_TICK_INTERVAL_S" in out and "somasessions/status" in out


@pytest.mark.asyncio
async def test_the_real_entry_point_runs_against_the_emulator(k8s, tmp_path, monkeypatch):
    """main() as `python -m soma_operator` runs it: real kopf.run (in a thread, with a stop flag),
    logging in through a kubeconfig, the `kubernetes` client for TTL deletes, metrics and the
    liveness probe on their ports. The cluster is kmock, an in-memory Kubernetes API emulator
    (not a real API server); the driver is scripted."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "kmock", "cluster": {"server": str(k8s.url).rstrip("/")}}],
                "users": [{"name": "tester", "user": {"token": "t"}}],
                "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "tester"}}],
                "current-context": "kmock",
            }
        )
    )
    metrics_port, health_port = free_port(), free_port()
    for key, value in {
        "KUBECONFIG": str(kubeconfig),
        "SOMA_OPERATOR_STANDALONE": "true",
        "SOMA_OPERATOR_TICK_INTERVAL_S": "0.2",
        "SOMA_OPERATOR_ERROR_BACKOFF_S": "0.2",
        "SOMA_OPERATOR_POST_EVENTS": "false",
        "SOMA_OPERATOR_METRICS_PORT": str(metrics_port),
        "SOMA_OPERATOR_HEALTH_PORT": str(health_port),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    driver = ScriptedDriver(report("SURROGATE", generation=1, activity=time.time() - 7200))
    k8s.objects[RESOURCE, NAMESPACE, "live"] = session_object("live", "live")
    k8s.objects[RESOURCE, NAMESPACE, "stale"] = session_object("stale", "stale", ttl_seconds=3600)
    stop = threading.Event()

    def run(**kwargs):
        kopf.run(loop=asyncio.new_event_loop(), stop_flag=stop, **kwargs)

    errors: list[BaseException] = []

    def serve():
        try:
            main([], run=run, build_driver=lambda settings: driver)
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        await eventually(lambda: errors or status_of(k8s, "live").get("phase") == "SURROGATE")
        assert not errors
        await eventually(lambda: gone(k8s, "stale"))  # TTL: deleted by the kubernetes client, then cleaned up
        assert set(driver.forgotten) == {"stale"}
        metrics = await asyncio.to_thread(_get, f"http://127.0.0.1:{metrics_port}/metrics")
        assert "soma_operator_ttl_deletions_total 1.0" in metrics
        assert await asyncio.to_thread(_get, f"http://127.0.0.1:{health_port}/healthz") is not None
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 30)
    assert not thread.is_alive()


def _get(url: str) -> str:
    return urllib.request.urlopen(url, timeout=10).read().decode()
