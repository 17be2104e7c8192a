"""The OpenAI-compatible HTTP door of a real `soma serve --target all` (real CPU models, default
settings but short answers), called by the real `openai` Python SDK and by `curl -N`; each
conversation is checked in the soma session it landed in through the gRPC Dialogue API. Tenant
isolation uses a `--target dialogue` server with two API keys in front of the stand-in teacher
(`soma.bench.instant_teacher`, a real TeacherService process)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager

import grpc
import openai
import pytest

from soma.bench.instant_teacher import start as start_teacher
from soma.client import open_channel
from soma.launcher import start_server
from soma.server.auth import hash_key
from soma.v1 import dialogue_pb2, dialogue_pb2_grpc
from tests.servers import free_port

pytestmark = pytest.mark.integration

QUERIES = ["How do I reverse a list in Python?", "And a tuple?", "And a string?"]


def _client(server, key=None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://{server.http_address}/v1", api_key=key or server.api_key, max_retries=0)


def _session(server, session_id, key=None):
    stub = dialogue_pb2_grpc.DialogueServiceStub(open_channel(server.address, key or server.api_key))
    return stub.GetSession(dialogue_pb2.GetSessionRequest(session_id=session_id, include_transcript=True))


def _play(client, headers=None, stream_turn=None):
    """Three turns resending the whole history, as an OpenAI app does; (session ids, answers)."""
    messages = [{"role": "system", "content": "Answer in one short sentence."}]
    ids, answers = [], []
    for i, query in enumerate(QUERIES):
        messages.append({"role": "user", "content": query})
        if i == stream_turn:
            raw = client.chat.completions.with_raw_response.create(
                model="soma",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                extra_headers=headers,
            )
            chunks = list(raw.parse())
            answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
            last = [c for c in chunks if c.choices][-1]
            assert last.choices[0].finish_reason in ("stop", "length")
            assert last.model_extra["soma"]["session_id"] == raw.headers["x-session-id"]
            assert raw.headers["x-soma-served-by"] == last.model_extra["soma"]["served_by"]
        else:
            raw = client.chat.completions.with_raw_response.create(
                model="soma", messages=messages, extra_headers=headers
            )
            completion = raw.parse()
            answer = completion.choices[0].message.content
            assert completion.usage.completion_tokens > 0
            assert raw.headers["x-soma-served-by"] in ("teacher", "surrogate")
            assert completion.model_extra["soma"]["turn_index"] == i + 1
        ids.append(raw.headers["x-session-id"])
        answers.append(answer)
        messages.append({"role": "assistant", "content": answer})
    return ids, answers


def test_the_sdk_with_a_session_id_plays_one_session(all_server):
    client = _client(all_server)
    assert {"soma"} <= {m.id for m in client.models.list().data}
    ids, answers = _play(client, headers={"X-Session-Id": "oai-header-1"})
    assert ids == ["oai-header-1"] * 3
    reply = _session(all_server, "oai-header-1")
    assert [(t.query, t.answer) for t in reply.transcript] == list(zip(QUERIES, answers, strict=True))


def test_the_sdk_resending_the_history_keeps_one_session(all_server):
    ids, answers = _play(_client(all_server), stream_turn=1)
    assert len(set(ids)) == 1
    reply = _session(all_server, ids[0])
    assert reply.session.turn_count == 3
    assert [(t.query, t.answer) for t in reply.transcript] == list(zip(QUERIES, answers, strict=True))


def test_a_contradicting_history_gets_409_and_changes_nothing(all_server):
    client = _client(all_server)
    headers = {"X-Session-Id": "oai-conflict-1"}
    first = client.chat.completions.create(
        model="soma", messages=[{"role": "user", "content": QUERIES[0]}], extra_headers=headers
    )
    forged = [
        {"role": "user", "content": QUERIES[0]},
        {"role": "assistant", "content": "something soma never said"},
        {"role": "user", "content": QUERIES[1]},
    ]
    with pytest.raises(openai.ConflictError) as info:
        client.chat.completions.create(model="soma", messages=forged, extra_headers=headers)
    assert info.value.status_code == 409 and "differs from the answer soma gave" in info.value.message
    changed = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": QUERIES[1]}]
    with pytest.raises(openai.ConflictError) as info:
        client.chat.completions.create(model="soma", messages=changed, extra_headers=headers)
    assert "system message differs" in info.value.message
    reply = _session(all_server, "oai-conflict-1")
    assert [(t.query, t.answer) for t in reply.transcript] == [(QUERIES[0], first.choices[0].message.content)]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_streams_server_sent_events(all_server):
    body = {"model": "soma", "stream": True, "messages": [{"role": "user", "content": QUERIES[0]}]}
    out = subprocess.run(
        [
            "curl",
            "-sN",
            f"http://{all_server.http_address}/v1/chat/completions",
            "-H",
            f"Authorization: Bearer {all_server.api_key}",
            "-H",
            "Content-Type: application/json",
            "-D",
            "-",
            "-d",
            json.dumps(body),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    head, _, stream = out.partition("\n\n")  # text mode: the \r\n of the headers read as \n
    assert "text/event-stream" in head and "x-session-id:" in head.lower()
    assert "x-soma-served-by: teacher" in head.lower()  # a new session's first turn: the teacher
    events = [line.removeprefix("data: ") for line in stream.splitlines() if line.startswith("data: ")]
    assert events and events[-1] == "[DONE]", out
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    session_id = chunks[-1]["soma"]["session_id"]
    assert _session(all_server, session_id).transcript[0].answer == text


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"model": "soma", "messages": []}, 400, "messages"),
        ({"model": "gpt-17", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
        ({"model": "soma", "messages": [{"role": "user", "content": "x" * 2001}]}, 400, "messages[0].content"),
        ({"model": "soma", "n": 2, "messages": [{"role": "user", "content": "hi"}]}, 400, "n"),
        (
            {"model": "soma", "tools": [{"type": "function"}], "messages": [{"role": "user", "content": "hi"}]},
            400,
            "tools",
        ),
        ({"model": "soma", "messages": [{"role": "assistant", "content": "hi"}]}, 400, "messages[0]"),
        ({"model": "soma", "max_tokens": -3, "messages": [{"role": "user", "content": "hi"}]}, 400, "max_tokens"),
    ],
)
def test_bad_requests_get_openai_errors_and_change_nothing(all_server, body, status, param):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"http://{all_server.http_address}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {all_server.api_key}", "X-Session-Id": "oai-bad-1"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=60)
    assert info.value.code == status
    error = json.loads(info.value.read())["error"]
    assert error["param"] == param and error["message"] and error["type"]
    with pytest.raises(grpc.RpcError) as missing:
        _session(all_server, "oai-bad-1")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND  # no session was opened


def test_malformed_json_and_a_bad_key(all_server):
    import urllib.error
    import urllib.request

    url = f"http://{all_server.http_address}/v1/chat/completions"
    request = urllib.request.Request(url, data=b"{not json", headers={"Authorization": f"Bearer {all_server.api_key}"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=60)
    assert info.value.code == 400 and json.loads(info.value.read())["error"]["code"] == "invalid_json"
    with pytest.raises(openai.AuthenticationError):
        _client(all_server, key="not-a-key").chat.completions.create(
            model="soma", messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(openai.AuthenticationError):
        _client(all_server, key="not-a-key").models.list()
    # no key at all: refused before the body is read; a body over the message limit: 413
    request = urllib.request.Request(url, data=b'{"model": "soma"}', headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=60)
    assert info.value.code == 401 and json.loads(info.value.read())["error"]["type"] == "authentication_error"
    import http.client

    host, port = all_server.http_address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Authorization", f"Bearer {all_server.api_key}")
    conn.putheader("Content-Length", str(17 << 20))  # refused on the header, before any of it is sent
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and json.loads(response.read())["error"]["message"].startswith("the body is over")
    conn.close()


@contextmanager
def _keyed_dialogue_env(tmp_path, tenants: dict[str, str], chunk_delay_ms: float = 0.0):
    """Env of a `--target dialogue` server whose API keys map to `tenants`, in front of the stand-in
    teacher (stopped on exit)."""
    keys = tmp_path / "api-keys.json"
    keys.write_text(json.dumps({hash_key(key): tenant for key, tenant in tenants.items()}))
    teacher, address = start_teacher(tmp_path / "teacher.log", chunk_delay_ms=chunk_delay_ms, port=free_port())
    try:
        yield {
            "SOMA_STATE_DIR": str(tmp_path / "state"),
            "SOMA_SERVER__API_KEYS_FILE": str(keys),
            "SOMA_DIALOGUE__TEACHER_ADDRESS": address,
            "SOMA_ADAPTATION__MODE": "off",
        }
    finally:
        teacher.kill()
        teacher.wait(30)


@pytest.fixture
def two_tenants(tmp_path):
    tenants = {"key-of-alice-0123456789": "alice", "key-of-bob-0123456789ab": "bob"}
    with _keyed_dialogue_env(tmp_path, tenants) as env:
        with start_server("dialogue", env=env, log_path=tmp_path / "dialogue.log") as server:
            yield server


def test_another_tenant_never_lands_in_the_first_tenant_s_session(two_tenants):
    server = two_tenants
    alice, bob = _client(server, "key-of-alice-0123456789"), _client(server, "key-of-bob-0123456789ab")
    history = [{"role": "user", "content": QUERIES[0]}]
    raw = alice.chat.completions.with_raw_response.create(model="soma", messages=history)
    alice_sid = raw.headers["x-session-id"]
    history += [{"role": "assistant", "content": raw.parse().choices[0].message.content}]
    history += [{"role": "user", "content": QUERIES[1]}]
    # bob resends alice's exact history, then names her session: neither reaches it
    bob_sid = bob.chat.completions.with_raw_response.create(model="soma", messages=history).headers["x-session-id"]
    assert bob_sid != alice_sid
    named = bob.chat.completions.with_raw_response.create(
        model="soma", messages=[{"role": "user", "content": "hello"}], extra_headers={"X-Session-Id": alice_sid}
    )
    assert named.headers["x-session-id"] == alice_sid  # the same id, but bob's own session
    mine = _session(server, alice_sid, "key-of-alice-0123456789")
    assert [t.query for t in mine.transcript] == [QUERIES[0]]
    assert [t.query for t in _session(server, alice_sid, "key-of-bob-0123456789ab").transcript] == ["hello"]
    # alice continues her conversation by resending it: her session, turn 2
    again = alice.chat.completions.with_raw_response.create(model="soma", messages=history)
    assert again.headers["x-session-id"] == alice_sid
    assert _session(server, alice_sid, "key-of-alice-0123456789").session.turn_count == 2


def test_a_resent_history_finds_its_session_after_a_restart(tmp_path):
    """The conversation is recognised by its stored transcript (DialogueService.FindSession), not by
    the serving process's memory: after the server restarts on the same store (or on another
    replica), the app that resends its history still lands in its session."""
    key = "key-of-carol-0123456789"
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUERIES[0]}]
    with _keyed_dialogue_env(tmp_path, {key: "carol"}) as env:
        with start_server("dialogue", env=env, log_path=tmp_path / "dialogue.log") as server:
            raw = _client(server, key).chat.completions.with_raw_response.create(model="soma", messages=history)
            first_id = raw.headers["x-session-id"]
            history += [{"role": "assistant", "content": raw.parse().choices[0].message.content}]
        history += [{"role": "user", "content": QUERIES[1]}]
        with start_server("dialogue", env=env, log_path=tmp_path / "dialogue.log") as server:
            again = _client(server, key).chat.completions.with_raw_response.create(model="soma", messages=history)
            assert again.headers["x-session-id"] == first_id
            assert [t.query for t in _session(server, first_id, key).transcript] == QUERIES[:2]
            # a history that differs in one character is another conversation: a new session
            history[2]["content"] += "!"
            other = _client(server, key).chat.completions.with_raw_response.create(model="soma", messages=history)
            assert other.headers["x-session-id"] != first_id


CAROL = "key-of-carol-0123456789"


@pytest.fixture(scope="module")
def slow_teacher(tmp_path_factory):
    """A dialogue server whose stand-in teacher sends one word every 300 ms."""
    tmp_path = tmp_path_factory.mktemp("slow")
    with _keyed_dialogue_env(tmp_path, {CAROL: "carol"}, chunk_delay_ms=300) as env:
        with start_server("dialogue", env=env, log_path=tmp_path / "dialogue.log") as server:
            yield server


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_client_that_leaves_before_its_answer_stores_no_turn(slow_teacher, stream):
    """A client that hangs up mid-answer never read that turn: storing it would put an answer in
    the session that its next request (resending what it saw) contradicts."""
    server, session_id = slow_teacher, f"oai-leaves-{'streamed' if stream else 'whole'}"
    client = _client(server, CAROL)
    short = [{"role": "user", "content": "hello there"}]
    first = client.chat.completions.create(model="soma", messages=short, extra_headers={"X-Session-Id": session_id})
    assert _session(server, session_id, CAROL).session.turn_count == 1  # a turn read to its end is stored

    words = " ".join(f"word{i}" for i in range(40))  # echoed one word per 300 ms: 12 s of answer
    messages = [*short, {"role": "assistant", "content": first.choices[0].message.content}]
    body = json.dumps({"model": "soma", "messages": [*messages, {"role": "user", "content": words}], "stream": stream})
    host, port = server.http_address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            (
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {CAROL}\r\n"
                f"X-Session-Id: {session_id}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n{body}"
            ).encode()
        )
        if stream:
            seen = b""
            while b"word1" not in seen:  # the answer is under way
                seen += sock.recv(4096)
        else:
            time.sleep(2)  # a few words generated, the answer not yet whole
    time.sleep(14)  # past the time the whole answer would have taken
    reply = _session(server, session_id, CAROL)
    assert reply.session.turn_count == 1
    assert [t.query for t in reply.transcript] == ["hello there"]
