"""Quotas on the Dialogue API of a real `soma serve --target dialogue` (two tenants' API keys, small
quotas) in front of the stand-in teacher `soma.bench.instant_teacher` (a real TeacherService process
with an instant echo backend, so the limits, not a model, are what the test exercises). Each quota
is refused at its boundary with RESOURCE_EXHAUSTED and a message naming it; the other tenant is
served throughout; nothing refused is stored."""

from __future__ import annotations

import json

import grpc
import pytest

from soma.bench.instant_teacher import start as start_instant_teacher
from soma.client import open_channel
from soma.launcher import start_server
from soma.server.auth import hash_key
from soma.v1 import dialogue_pb2, dialogue_pb2_grpc
from tests.servers import free_port, scrape_metrics

pytestmark = pytest.mark.integration

ACME, BETA = "key-of-acme-0123456789abcdef", "key-of-beta-0123456789abcdef"


@pytest.fixture(scope="module")
def quota_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("quotas")
    keys = root / "api-keys.json"
    keys.write_text(json.dumps({hash_key(ACME): "acme", hash_key(BETA): "beta"}))
    token = root / "service-token"
    token.write_text("service-token-0123456789")
    teacher, address = start_instant_teacher(root / "teacher.log", token)
    metrics_port = free_port()
    env = {
        "SOMA_STATE_DIR": str(root / "state"),
        "SOMA_SERVER__API_KEYS_FILE": str(keys),
        "SOMA_SERVER__SERVICE_TOKEN_FILE": str(token),
        "SOMA_DIALOGUE__TEACHER_ADDRESS": address,
        "SOMA_ADAPTATION__MODE": "off",
        "SOMA_TELEMETRY__METRICS_PORT": str(metrics_port),
        "SOMA_QUOTAS__SESSIONS_PER_TENANT": "2",
        "SOMA_QUOTAS__TURNS_PER_SESSION": "2",
        "SOMA_QUOTAS__HISTORY_BYTES_PER_SESSION": "2000",
        "SOMA_QUOTAS__OPEN_RATE_PER_TENANT": "0.01",
        "SOMA_QUOTAS__OPEN_BURST_PER_TENANT": "3",
    }
    try:
        with start_server("dialogue", env=env, log_path=root / "dialogue.log") as server:
            yield server, metrics_port
    finally:
        teacher.terminate()
        teacher.wait(30)


def _stub(server, key):
    return dialogue_pb2_grpc.DialogueServiceStub(open_channel(server.address, key))


def _exhausted(call) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
    return info.value.details()


def _chat(stub, sid, query="Say yes."):
    return list(stub.Chat(dialogue_pb2.ChatRequest(session_id=sid, query=query), timeout=60))


def test_each_quota_is_refused_at_its_boundary_and_the_other_tenant_is_served(quota_server):
    server, metrics_port = quota_server
    acme, beta = _stub(server, ACME), _stub(server, BETA)
    open_ = lambda stub, sid, system="": stub.OpenSession(  # noqa: E731
        dialogue_pb2.OpenSessionRequest(session_id=sid, system_prompt=system), timeout=30
    )
    open_(acme, "a1")
    open_(acme, "a2", system="x" * 2500)  # stores more than history_bytes_per_session (2,000)
    message = _exhausted(lambda: open_(acme, "a3"))  # the third open session
    assert "quotas.sessions_per_tenant" in message and "2 open sessions" in message
    message = _exhausted(lambda: open_(acme, "a4"))  # the fourth call in a burst of 3
    assert "quotas.open_rate_per_tenant" in message and "retry in" in message
    # the other tenant is counted apart
    open_(beta, "b1")
    assert _chat(beta, "b1")[-1].HasField("turn")

    _chat(acme, "a1")
    _chat(acme, "a1")
    message = _exhausted(lambda: _chat(acme, "a1"))  # a third turn
    assert "quotas.turns_per_session" in message and "open a new session" in message
    message = _exhausted(lambda: _chat(acme, "a2"))
    assert "quotas.history_bytes_per_session" in message
    # nothing refused was stored
    got = acme.GetSession(dialogue_pb2.GetSessionRequest(session_id="a1", include_transcript=True))
    assert got.session.turn_count == 2 and len(got.transcript) == 2
    assert acme.GetSession(dialogue_pb2.GetSessionRequest(session_id="a2")).session.turn_count == 0
    for sid in ("a3", "a4"):
        with pytest.raises(grpc.RpcError) as info:
            acme.GetSession(dialogue_pb2.GetSessionRequest(session_id=sid))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    # closing a session frees its place (once the open rate allows another call)
    acme.CloseSession(dialogue_pb2.CloseSessionRequest(session_id="a1"))
    assert _chat(beta, "b1")[-1].HasField("turn")
    m = scrape_metrics(metrics_port)
    for limit in ("sessions_per_tenant", "open_rate_per_tenant", "turns_per_session", "history_bytes_per_session"):
        assert m[f'soma_quota_refusals_total{{limit="{limit}"}}'] >= 1, limit
