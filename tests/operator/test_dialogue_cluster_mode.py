"""Cluster mode: the dialogue service, as `soma serve` wires it (serve.somasession_hooks), creates a
session's SomaSession at OpenSession and deletes it at CloseSession. The Kubernetes API here is
kmock, an in-memory emulator (not a real API server); the dialogue service is a real gRPC server."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from kubernetes import client

from soma.config import load_settings
from soma.dialogue import service as dialogue
from soma.k8s.session_resource import SessionResources, object_name
from soma.serve import somasession_hooks
from soma.server.app import SomaServer
from soma.storage.session_store import SqliteSessionStore
from soma.v1 import dialogue_pb2, dialogue_pb2_grpc
from tests.operator.conftest import NAMESPACE, RESOURCE


@pytest.mark.asyncio
async def test_open_and_close_session_create_and_delete_the_somasession(k8s, tmp_path):
    settings = load_settings(
        overrides={
            "server": {"port": 0, "grace_period_s": 1},
            "dialogue": {"session_ttl_s": 600},
            "adaptation": {"mode": "operator"},
            "teacher": {"model": "Qwen/Qwen3-8B"},
        }
    )
    config = client.Configuration()
    config.host = str(k8s.url).rstrip("/")
    resources = SessionResources(NAMESPACE, api=client.CustomObjectsApi(client.ApiClient(config)))
    on_open, on_close = somasession_hooks(resources, settings)
    server = SomaServer(settings.server)
    store = SqliteSessionStore(tmp_path / "s.db")
    server.add(
        dialogue.hosted(
            store, server.address, settings.dialogue, grpc.insecure_channel, on_open=on_open, on_close=on_close
        )
    )
    server.start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = dialogue_pb2_grpc.DialogueServiceStub(channel)
            request = dialogue_pb2.OpenSessionRequest(session_id="Tenant.A_42", labels={"tenant": "tenant-a"})
            await asyncio.to_thread(stub.OpenSession, request)
            obj = k8s.objects[RESOURCE, NAMESPACE, object_name("Tenant.A_42")]
            assert obj["spec"] == {
                "sessionId": "Tenant.A_42",
                "tenant": "tenant-a",
                "teacherModel": "Qwen/Qwen3-8B",
                "surrogateModel": "smollm2-135m-instruct",
                "warmTurns": settings.method.config().warm_turns,
                "ttlSeconds": 600,
            }
            assert "status" not in obj  # the operator's, never the dialogue service's
            assert not obj.deleted
            await asyncio.to_thread(stub.CloseSession, dialogue_pb2.CloseSessionRequest(session_id="Tenant.A_42"))
            assert k8s.objects[RESOURCE, NAMESPACE, object_name("Tenant.A_42")].deleted
    finally:
        server.stop(0)
