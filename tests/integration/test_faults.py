"""Faults and fairness on a real `soma serve --target dialogue` (adaptation off) in front of the
stand-in teacher `soma.bench.instant_teacher` (a real TeacherService process) slowed to 50 ms per
chunk, so a turn lasts long enough to kill the teacher under it or to flood the replica with it."""

from __future__ import annotations

import json
import threading

import grpc
import pytest

from soma.bench.instant_teacher import start as start_teacher
from soma.client import open_channel
from soma.launcher import start_server
from soma.server.auth import hash_key
from soma.v1 import dialogue_pb2, dialogue_pb2_grpc
from tests.servers import free_port

pytestmark = pytest.mark.integration

QUIET, FLOOD = "key-of-quiet-0123456789abcdef", "key-of-flood-0123456789abcdef"
LONG_QUERY = " ".join(f"word{i}" for i in range(40))  # the stand-in echoes it: 16 chunks at 50 ms


@pytest.fixture
def stack(tmp_path):
    keys = tmp_path / "api-keys.json"
    keys.write_text(json.dumps({hash_key(QUIET): "quiet", hash_key(FLOOD): "flood"}))
    port = free_port()
    teacher, address = start_teacher(tmp_path / "teacher.log", chunk_delay_ms=50, port=port)
    env = {
        "SOMA_STATE_DIR": str(tmp_path / "state"),
        "SOMA_SERVER__API_KEYS_FILE": str(keys),
        "SOMA_DIALOGUE__TEACHER_ADDRESS": address,
        "SOMA_ADAPTATION__MODE": "off",
        "SOMA_DIALOGUE__MAX_CONCURRENT_TURNS": "4",
        "SOMA_QUOTAS__TURNS_IN_FLIGHT_PER_TENANT": "2",
    }
    state = {"teacher": teacher, "port": port, "root": tmp_path}
    try:
        with start_server("dialogue", env=env, log_path=tmp_path / "dialogue.log") as server:
            state["server"] = server
            yield state
    finally:
        state["teacher"].kill()
        state["teacher"].wait(30)


def _stub(server, key):
    return dialogue_pb2_grpc.DialogueServiceStub(open_channel(server.address, key))


def _chat(stub, sid, query=LONG_QUERY, turn_index=0):
    request = dialogue_pb2.ChatRequest(session_id=sid, query=query, turn_index=turn_index)
    request.params.max_new_tokens = 16
    return list(stub.Chat(request, timeout=60))


def test_one_tenant_flooding_the_replica_leaves_the_other_served(stack):
    """Issue 15: 8 concurrent turns of one tenant on a 4-slot replica: its fair share (2) runs, the
    rest are refused naming quotas.turns_in_flight_per_tenant, and the other tenant's turn is served
    meanwhile."""
    server = stack["server"]
    flood, quiet = _stub(server, FLOOD), _stub(server, QUIET)
    for i in range(8):
        flood.OpenSession(dialogue_pb2.OpenSessionRequest(session_id=f"f{i}"))
    quiet.OpenSession(dialogue_pb2.OpenSessionRequest(session_id="q"))
    outcomes: dict[int, str] = {}
    started = threading.Barrier(9)

    def flood_turn(i):
        started.wait()
        try:
            _chat(flood, f"f{i}")
            outcomes[i] = "OK"
        except grpc.RpcError as err:
            outcomes[i] = f"{err.code().name}: {err.details()}"

    threads = [threading.Thread(target=flood_turn, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    started.wait()
    quiet_turn = _chat(quiet, "q", "Say yes.")  # while the flood's turns stream
    for t in threads:
        t.join()
    assert quiet_turn[-1].HasField("turn")
    ok = [i for i, o in outcomes.items() if o == "OK"]
    refused = [o for o in outcomes.values() if o != "OK"]
    assert len(ok) == 2, outcomes
    assert all(o.startswith("RESOURCE_EXHAUSTED") and "quotas.turns_in_flight_per_tenant" in o for o in refused)


def test_the_teacher_killed_mid_stream_leaves_the_transcript_and_a_retry_succeeds(stack):
    """Issue 15: the client gets UNAVAILABLE, nothing is stored, and the same turn_index succeeds
    once a teacher answers on that address again."""
    server = stack["server"]
    stub = _stub(server, QUIET)
    stub.OpenSession(dialogue_pb2.OpenSessionRequest(session_id="s"))
    request = dialogue_pb2.ChatRequest(session_id="s", query=LONG_QUERY, turn_index=1)
    request.params.max_new_tokens = 16
    stream = stub.Chat(request, timeout=60)
    first = next(stream)  # the teacher is streaming
    assert first.HasField("chunk")
    stack["teacher"].kill()
    with pytest.raises(grpc.RpcError) as info:
        list(stream)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
    got = stub.GetSession(dialogue_pb2.GetSessionRequest(session_id="s", include_transcript=True))
    assert got.session.turn_count == 0 and not got.transcript
    stack["teacher"].wait(30)
    stack["teacher"], _ = start_teacher(stack["root"] / "teacher.log", chunk_delay_ms=50, port=stack["port"])
    retried = _chat(stub, "s", turn_index=1)
    assert retried[-1].turn.turn_index == 1
    got = stub.GetSession(dialogue_pb2.GetSessionRequest(session_id="s", include_transcript=True))
    assert got.session.turn_count == 1 and got.transcript[0].query == LONG_QUERY


@pytest.fixture
def redis_stack(tmp_path):
    """The same dialogue server, its sessions in a real redis-server (append-only file, so a restart
    on the same port keeps them)."""
    from tests.servers import redis_server

    keys = tmp_path / "api-keys.json"
    keys.write_text(json.dumps({hash_key(QUIET): "quiet"}))
    teacher, address = start_teacher(tmp_path / "teacher.log", chunk_delay_ms=50, port=free_port())
    redis_dir = tmp_path / "redis"
    with redis_server(redis_dir) as (url, redis_proc):
        env = {
            "SOMA_STATE_DIR": str(tmp_path / "state"),
            "SOMA_SERVER__API_KEYS_FILE": str(keys),
            "SOMA_DIALOGUE__TEACHER_ADDRESS": address,
            "SOMA_DIALOGUE__SESSION_STORE": "redis",
            "SOMA_DIALOGUE__REDIS_URL": url,
            "SOMA_ADAPTATION__MODE": "off",
        }
        state = {"redis": redis_proc, "redis_dir": redis_dir, "redis_port": int(url.rsplit(":", 1)[1].split("/")[0])}
        try:
            with start_server("dialogue", env=env, log_path=tmp_path / "dialogue.log") as server:
                state["server"] = server
                yield state
        finally:
            teacher.kill()
            teacher.wait(30)


def _transcript(stub, sid):
    got = stub.GetSession(dialogue_pb2.GetSessionRequest(session_id=sid, include_transcript=True))
    return got.session.turn_count, [t.query for t in got.transcript]


def test_redis_restarted_mid_turn_loses_no_turn_and_stores_none_twice(redis_stack):
    """Issue 15: Redis goes down while the teacher streams a turn. Down at the commit: the client gets
    UNAVAILABLE and nothing is stored; once Redis is back (its append-only file intact) the same
    turn_index succeeds. Restarted before the commit: the turn is stored once."""
    from tests.servers import redis_server

    stub = _stub(redis_stack["server"], QUIET)
    stub.OpenSession(dialogue_pb2.OpenSessionRequest(session_id="r"))
    queries = [f"{LONG_QUERY} first", f"{LONG_QUERY} second"]

    request = dialogue_pb2.ChatRequest(session_id="r", query=queries[0], turn_index=1)
    request.params.max_new_tokens = 16
    stream = stub.Chat(request, timeout=60)
    assert next(stream).HasField("chunk")  # the teacher is streaming
    redis_stack["redis"].kill()  # down until after the turn ends: its commit cannot reach the store
    redis_stack["redis"].wait(10)
    with pytest.raises(grpc.RpcError) as info:
        list(stream)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()

    with redis_server(redis_stack["redis_dir"], port=redis_stack["redis_port"]) as (_, proc):
        assert _transcript(stub, "r") == (0, [])  # the session survived; the failed turn was not stored
        assert _chat(stub, "r", query=queries[0], turn_index=1)[-1].turn.turn_index == 1  # the retry

        request = dialogue_pb2.ChatRequest(session_id="r", query=queries[1], turn_index=2)
        request.params.max_new_tokens = 16
        stream = stub.Chat(request, timeout=60)
        assert next(stream).HasField("chunk")
        proc.terminate()  # restarted while the teacher streams, back before the commit
        proc.wait(10)
        with redis_server(redis_stack["redis_dir"], port=redis_stack["redis_port"]):
            events = list(stream)
            assert events[-1].turn.turn_index == 2
            assert _transcript(stub, "r") == (2, queries)
            with pytest.raises(grpc.RpcError) as again:  # a retry of a stored turn is refused, not stored twice
                _chat(stub, "r", query=queries[1], turn_index=2)
            assert again.value.code() == grpc.StatusCode.ABORTED
            assert _transcript(stub, "r") == (2, queries)
