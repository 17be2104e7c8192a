"""API keys and tenants on the Dialogue API of a real `soma serve --target all`.

Every public RPC x {no credential, malformed, wrong key, another tenant's key, the right key}; the
local key that embedded mode makes at first start; and `server.auth=none` refused off loopback.
"""

import json
import os
import subprocess
import sys

import grpc
import pytest

from soma.client import open_channel
from soma.launcher import start_server
from soma.server.auth import hash_key
from soma.v1 import dialogue_pb2, dialogue_pb2_grpc
from tests.integration.conftest import SERVER_ENV

pytestmark = pytest.mark.integration

KEY_A, KEY_B = "key-of-tenant-a-0123456789", "key-of-tenant-b-0123456789"


@pytest.fixture(scope="module")
def two_tenants(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth")
    keys = root / "api-keys.json"
    keys.write_text(json.dumps({hash_key(KEY_A): "tenant-a", hash_key(KEY_B): "tenant-b"}))
    env = {**SERVER_ENV, "SOMA_STATE_DIR": str(root / "state"), "SOMA_SERVER__API_KEYS_FILE": str(keys)}
    with start_server("all", env=env, log_path=root / "all.log") as server:
        yield server, root


def _stub(address: str, metadata_key: str | None, raw_header: str | None = None):
    if raw_header is not None:
        channel = grpc.insecure_channel(address)
        stub = dialogue_pb2_grpc.DialogueServiceStub(channel)
        return stub, channel, [("authorization", raw_header)]
    channel = open_channel(address, metadata_key or "")
    return dialogue_pb2_grpc.DialogueServiceStub(channel), channel, None


def _calls(stub, metadata, sid):
    """Each public RPC on session `sid`, as a callable."""
    return {
        "OpenSession": lambda: stub.OpenSession(
            dialogue_pb2.OpenSessionRequest(session_id=sid + "-new"), metadata=metadata, timeout=30
        ),
        "Chat": lambda: list(
            stub.Chat(dialogue_pb2.ChatRequest(session_id=sid, query="Say yes."), metadata=metadata, timeout=120)
        ),
        "GetSession": lambda: stub.GetSession(
            dialogue_pb2.GetSessionRequest(session_id=sid, include_transcript=True), metadata=metadata, timeout=30
        ),
        "CloseSession": lambda: stub.CloseSession(
            dialogue_pb2.CloseSessionRequest(session_id=sid), metadata=metadata, timeout=30
        ),
    }


def test_the_authz_matrix(two_tenants):
    server, root = two_tenants
    owner, owner_channel, _ = _stub(server.address, KEY_A)
    secret = "the-system-prompt-only-tenant-a-may-read"
    sid = owner.OpenSession(dialogue_pb2.OpenSessionRequest(session_id="a-1", system_prompt=secret)).session.session_id
    list(owner.Chat(dialogue_pb2.ChatRequest(session_id=sid, query="Say hi.")))
    credentials = {
        "none": (None, None),
        "malformed": (None, "Basic " + KEY_A),
        "wrong": ("not-a-key", None),
        "other tenant": (KEY_B, None),
    }
    for name, (key, raw) in credentials.items():
        stub, channel, metadata = _stub(server.address, key, raw)
        with channel:
            for rpc, call in _calls(stub, metadata, sid).items():
                if name == "other tenant" and rpc == "OpenSession":
                    continue  # a fresh id: tenant B may open its own sessions
                with pytest.raises(grpc.RpcError) as info:
                    call()
                want = grpc.StatusCode.NOT_FOUND if name == "other tenant" else grpc.StatusCode.UNAUTHENTICATED
                assert info.value.code() == want, (name, rpc, info.value.details())
                assert secret not in (info.value.details() or "") and "tenant-a" not in (info.value.details() or "")
    # nothing the refused calls did reached the session: one turn, still open, still tenant A's
    got = owner.GetSession(dialogue_pb2.GetSessionRequest(session_id=sid, include_transcript=True))
    assert got.session.turn_count == 1 and got.session.labels["tenant"] == "tenant-a"
    assert got.session.system_prompt == secret
    # client-chosen ids are scoped per tenant: B opens its own "a-1", learning nothing of A's
    other_tenant, b_channel, _ = _stub(server.address, KEY_B)
    with b_channel:
        mine = other_tenant.OpenSession(dialogue_pb2.OpenSessionRequest(session_id=sid, system_prompt="B's"))
        assert mine.session.session_id == sid and mine.session.labels["tenant"] == "tenant-b"
        assert other_tenant.GetSession(dialogue_pb2.GetSessionRequest(session_id=sid)).session.system_prompt == "B's"
    assert owner.GetSession(dialogue_pb2.GetSessionRequest(session_id=sid)).session.system_prompt == secret
    # the right key: every RPC works; a tenant label in the request cannot claim another tenant
    other = owner.OpenSession(dialogue_pb2.OpenSessionRequest(labels={"tenant": "tenant-b"})).session
    assert other.labels["tenant"] == "tenant-a"
    assert owner.CloseSession(dialogue_pb2.CloseSessionRequest(session_id=sid)).session.session_id == sid
    owner_channel.close()
    log = (root / "all.log").read_text()
    assert KEY_A not in log and KEY_B not in log


def test_embedded_mode_makes_a_local_key_at_first_start(all_server):
    """The shared `all` server of the suite runs with the defaults: it made (or found) a local key."""
    assert all_server.api_key.startswith("soma-")
    stub, channel, _ = _stub(all_server.address, all_server.api_key)
    with channel:
        assert stub.OpenSession(dialogue_pb2.OpenSessionRequest()).session.labels["tenant"] == "local"
    stub, channel, _ = _stub(all_server.address, "")
    with channel, pytest.raises(grpc.RpcError) as info:
        stub.OpenSession(dialogue_pb2.OpenSessionRequest())
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in info.value.details()


def test_auth_none_is_refused_off_loopback():
    out = subprocess.run(
        [sys.executable, "-m", "soma", "serve", "--target", "dialogue", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SOMA_SERVER__AUTH": "none", "SOMA_DIALOGUE__TEACHER_ADDRESS": "127.0.0.1:9"},
    )
    assert out.returncode == 2 and "server.auth=none is allowed on a loopback host only" in out.stderr
