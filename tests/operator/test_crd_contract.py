"""What the operator and the dialogue service write fits the SomaSession CRD's schema
(charts/soma/crds/somasession.yaml): a real API server prunes unknown fields and refuses
invalid ones, which kmock does not, so the contract is checked here against the CRD itself."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from soma.k8s.session_resource import GROUP, KIND, PLURAL, VERSION, SessionResources
from soma_operator import status as st

CRD = Path(__file__).resolve().parents[2] / "charts/soma/crds/somasession.yaml"
NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def schema():
    crd = yaml.safe_load(CRD.read_text())
    assert crd["spec"]["group"] == GROUP and crd["spec"]["names"]["kind"] == KIND
    assert crd["spec"]["names"]["plural"] == PLURAL
    version = next(v for v in crd["spec"]["versions"] if v["name"] == VERSION)
    assert "status" in version["subresources"]
    return version["schema"]["openAPIV3Schema"]["properties"]


def _check(schema_part: dict, value: dict) -> None:
    """Valid, and no field the schema does not list (the API server would prune it)."""
    jsonschema.validate(value, schema_part, format_checker=jsonschema.FormatChecker())
    listed = set(schema_part.get("properties", {}))
    assert set(value) <= listed, f"not in the CRD: {set(value) - listed}"


def _report(**changes):
    base = {
        "phase": "SURROGATE",
        "generation": 2,
        "attempts": 1,
        "step": "idle",
        "job_id": "job-1",
        "adapter_uri": "s3://soma-adapters/s/2",
        "adapter_sha256": "ab" * 32,
        "last_reason": "gate accepted generation 2",
        "counters": {"turns": 9, "teacherTurns": 6, "surrogateTurns": 3, "switches": 1, "rollbacks": 0},
        "lastActivity": NOW,
    }
    return {**base, **changes}


@pytest.mark.parametrize(
    "status",
    [
        st.initial_status(NOW, 1),
        st.from_report(_report(), st.initial_status(NOW - 60, 1), 1, NOW),
        st.from_report(_report(adapter_uri=None, adapter_sha256=None, job_id=None), {}, 1, NOW),
        st.decide(
            st.initial_status(NOW, 1), None, generation=1, now=NOW, counters_written_at=None, counters_interval_s=60
        ).patch,
    ],
    ids=["initial", "report", "no-adapter", "closed"],
)
def test_status_fits_the_crd(schema, status):
    _check(schema["status"], status)
    if "counters" in status:
        _check(schema["status"]["properties"]["counters"], status["counters"])


class _RecordingApi:
    def __init__(self):
        self.bodies = []

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.bodies.append(body)


@pytest.mark.parametrize("session_id", ["Sess_1", "a" * 128, "x.y-z"])
def test_spec_fits_the_crd(schema, session_id):
    api = _RecordingApi()
    SessionResources("ns", api=api).create(session_id, "tenant-a", "teacher", "surrogate", 4, 86400)
    _check(schema["spec"], api.bodies[0]["spec"])
