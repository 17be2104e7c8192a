"""soma.k8s.session_resource: object names, and create/delete through the real `kubernetes`
client against kmock, an in-memory Kubernetes API emulator (not a real API server)."""

from __future__ import annotations

import asyncio
import re

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from soma.k8s.session_resource import SessionResources, object_name
from tests.operator.conftest import NAMESPACE, RESOURCE

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@pytest.mark.parametrize(
    "session_id",
    ["s", "Sess_1", "a.b.c", "UPPER", "x" * 128, "9-_.-_.", "a" + "_" * 127, "tenant.Alpha_session-42"],
)
def test_names_are_dns_labels(session_id):
    name = object_name(session_id)
    assert DNS_LABEL.match(name) and len(name) <= 63
    assert object_name(session_id) == name  # stable: the dialogue service and the operator agree


def test_names_keep_the_id_readable_and_tell_case_and_punctuation_apart():
    assert object_name("Sess_1").startswith("sess-1-")
    names = {object_name(i) for i in ("a", "A", "a_b", "a.b", "a-b", "A_B")}
    assert len(names) == 6


@pytest.fixture
def resources(k8s):
    config = client.Configuration()
    config.host = str(k8s.url).rstrip("/")
    return SessionResources(NAMESPACE, api=client.CustomObjectsApi(client.ApiClient(config)))


def _create(resources, session_id="Sess_1"):
    return resources.create(session_id, "tenant-a", "Qwen/Qwen3-8B", "Qwen/Qwen3-0.6B", 4, 3600)


@pytest.mark.asyncio
async def test_create_writes_the_spec_and_twice_is_fine(k8s, resources):
    name = await asyncio.to_thread(_create, resources)
    assert await asyncio.to_thread(_create, resources) == name  # a retried OpenSession: 409, ignored
    obj = k8s.objects[RESOURCE, NAMESPACE, name]
    assert obj["spec"] == {
        "sessionId": "Sess_1",
        "tenant": "tenant-a",
        "teacherModel": "Qwen/Qwen3-8B",
        "surrogateModel": "Qwen/Qwen3-0.6B",
        "warmTurns": 4,
        "ttlSeconds": 3600,
    }
    assert "status" not in obj  # the operator's field


@pytest.mark.asyncio
async def test_delete_removes_the_object_and_a_missing_one_is_fine(k8s, resources):
    name = await asyncio.to_thread(_create, resources)
    assert await asyncio.to_thread(resources.delete, "Sess_1") is True
    assert k8s.objects[RESOURCE, NAMESPACE, name].deleted
    assert await asyncio.to_thread(resources.delete, "Sess_1") is False
    assert await asyncio.to_thread(resources.delete, "never-created") is False


@pytest.mark.asyncio
async def test_other_errors_are_raised(k8s, resources):
    """Only 409 on create and 404 on delete mean 'already done'; a refusal (403: RBAC) is raised."""
    k8s["post"] << 403 << {"kind": "Status", "code": 403, "reason": "Forbidden"}
    k8s["delete"] << 403 << {"kind": "Status", "code": 403, "reason": "Forbidden"}
    with pytest.raises(ApiException) as err:
        await asyncio.to_thread(_create, resources)
    assert err.value.status == 403
    with pytest.raises(ApiException) as err:
        await asyncio.to_thread(resources.delete, "Sess_1")
    assert err.value.status == 403
