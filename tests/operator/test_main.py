"""`python -m soma_operator`: its kopf options and its wiring, without a cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import kopf
from soma_operator.__main__ import main, run_options
from soma_operator.handlers import FINALIZER
from soma_operator.settings import OperatorSettings

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
