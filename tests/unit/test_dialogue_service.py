"""The dialogue service inside the real server framework, over real gRPC, against a scripted
teacher (a test double standing in for the model, so these tests run in seconds; the
integration tests use the real models).

Checks status codes and messages for bad input, and that no failure corrupts a transcript.
"""

import threading

import grpc
import pytest

from soma.config import load_settings
from soma.dialogue import service as dialogue
from soma.server.app import HostedService, SomaServer
from soma.storage.session_store import SqliteSessionStore
from soma.telemetry.tracing import traced_channel
from soma.v1 import common_pb2, dialogue_pb2, dialogue_pb2_grpc, teacher_pb2, teacher_pb2_grpc


class ScriptedTeacher(teacher_pb2_grpc.TeacherServiceServicer):
    """Echoes how many messages it saw; fails on request."""

    def __init__(self):
        self.mode = "ok"
        self.seen: list[list[tuple[int, str]]] = []
        self.release = threading.Event()

    def Generate(self, request, context):
        self.seen.append([(m.role, m.content) for m in request.messages])
        if self.mode == "refuse":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "prompt needs 9000 tokens; the limit is 8192")
        yield teacher_pb2.TeacherServiceGenerateResponse(chunk=common_pb2.TextChunk(text="seen "))
        if self.mode == "die":
            context.abort(grpc.StatusCode.UNAVAILABLE, "model crashed")
        if self.mode == "slow":
            self.release.wait(10)
        text = f"{len(request.messages)} messages"
        yield teacher_pb2.TeacherServiceGenerateResponse(chunk=common_pb2.TextChunk(text=text))
        yield teacher_pb2.TeacherServiceGenerateResponse(
            result=common_pb2.GenerationResult(
                text="seen " + text,
                finish_reason=common_pb2.FINISH_REASON_STOP,
                prompt_tokens=7 * len(request.messages),
                completion_tokens=3,
                model_latency_ms=1.5,
            )
        )


@pytest.fixture
def stack(tmp_path):
    settings = load_settings(
        overrides={"server": {"port": 0, "grace_period_s": 1}, "dialogue": {"max_query_chars": 50}}
    )
    teacher = ScriptedTeacher()
    server = SomaServer(settings.server)
    server.add(
        HostedService(
            "soma.v1.TeacherService", lambda s: teacher_pb2_grpc.add_TeacherServiceServicer_to_server(teacher, s)
        )
    )
    store = SqliteSessionStore(tmp_path / "sessions.db")
    server.add(dialogue.hosted(store, server.address, settings.dialogue, grpc.insecure_channel))
    server.start()
    channel = grpc.insecure_channel(server.address)
    yield dialogue_pb2_grpc.DialogueServiceStub(channel), teacher, store
    channel.close()
    server.stop(0)


def _chat(stub, sid, query, **params):
    responses = list(
        stub.Chat(dialogue_pb2.ChatRequest(session_id=sid, query=query, params=common_pb2.GenerationParams(**params)))
    )
    return "".join(r.chunk.text for r in responses if r.HasField("chunk")), responses[-1].turn


def _open(stub, **kw):
    return stub.OpenSession(dialogue_pb2.OpenSessionRequest(**kw)).session.session_id


def test_turns_carry_full_history_and_records(stack):
    stub, teacher, _ = stack
    sid = _open(stub, system_prompt="be brief")
    text1, rec1 = _chat(stub, sid, "hi")
    text2, rec2 = _chat(stub, sid, "again")
    assert text1 == "seen 2 messages" and text2 == "seen 4 messages"
    assert teacher.seen[1] == [
        (common_pb2.ROLE_SYSTEM, "be brief"),
        (common_pb2.ROLE_USER, "hi"),
        (common_pb2.ROLE_ASSISTANT, "seen 2 messages"),
        (common_pb2.ROLE_USER, "again"),
    ]
    assert (rec1.turn_index, rec2.turn_index) == (1, 2)
    assert rec2.served_by == common_pb2.SERVED_BY_TEACHER and rec2.phase == common_pb2.SESSION_PHASE_WARMUP
    assert rec2.prompt_tokens == 28 and rec2.completion_tokens == 3 and rec2.route_reason
    assert rec2.latency_ms >= rec2.model_latency_ms == 1.5
    got = stub.GetSession(dialogue_pb2.GetSessionRequest(session_id=sid, include_transcript=True))
    assert got.session.turn_count == 2 and got.session.teacher_turns == 2
    assert [t.answer for t in got.transcript] == [text1, text2]


def _code(fn):
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code(), info.value.details()


def test_bad_input_codes_and_messages(stack):
    stub, _, _ = stack
    sid = _open(stub)
    _chat(stub, sid, "first")
    code, msg = _code(lambda: _chat(stub, sid, "   "))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "query is empty" in msg and "50" in msg
    code, msg = _code(lambda: _chat(stub, sid, "x" * 51))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "limit is 50" in msg
    code, msg = _code(lambda: _chat(stub, "no-such-session", "hi"))
    assert code == grpc.StatusCode.NOT_FOUND and "no-such-session" in msg
    code, msg = _code(lambda: _chat(stub, "../../etc/passwd", "hi"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "session_id" in msg
    code, _ = _code(lambda: _open(stub, session_id=sid))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    stub.CloseSession(dialogue_pb2.CloseSessionRequest(session_id=sid))  # closed and erased
    code, msg = _code(lambda: _chat(stub, sid, "hi"))
    assert code == grpc.StatusCode.NOT_FOUND and "does not exist" in msg
    code, _ = _code(lambda: stub.CloseSession(dialogue_pb2.CloseSessionRequest(session_id=sid)))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = _code(lambda: stub.GetSession(dialogue_pb2.GetSessionRequest(session_id=sid)))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = _code(lambda: stub.GetSession(dialogue_pb2.GetSessionRequest(session_id="missing")))
    assert code == grpc.StatusCode.NOT_FOUND


def test_teacher_failures_leave_transcript_intact(stack):
    stub, teacher, store = stack
    sid = _open(stub)
    _chat(stub, sid, "first")
    teacher.mode = "die"
    code, msg = _code(lambda: _chat(stub, sid, "second"))
    assert code == grpc.StatusCode.UNAVAILABLE and "teacher" in msg and "not stored" in msg
    teacher.mode = "refuse"
    code, msg = _code(lambda: _chat(stub, sid, "second"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "8192" in msg
    assert [t.query for t in store.turns(sid)] == ["first"]
    teacher.mode = "ok"
    _, rec = _chat(stub, sid, "second")
    assert rec.turn_index == 2


def test_concurrent_turn_on_one_session_is_aborted(stack):
    stub, teacher, store = stack
    sid = _open(stub)
    teacher.mode = "slow"
    first = stub.Chat(dialogue_pb2.ChatRequest(session_id=sid, query="slow one"))
    assert next(first).chunk.text == "seen "  # the first turn is in flight
    code, msg = _code(lambda: _chat(stub, sid, "second"))
    assert code == grpc.StatusCode.ABORTED and "in progress" in msg
    teacher.release.set()
    assert list(first)[-1].turn.turn_index == 1
    assert len(store.turns(sid)) == 1


def test_client_cancel_stores_nothing(stack):
    stub, teacher, store = stack
    sid = _open(stub)
    teacher.mode = "slow"
    call = stub.Chat(dialogue_pb2.ChatRequest(session_id=sid, query="will cancel"))
    next(call)
    call.cancel()
    teacher.release.set()
    teacher.mode = "ok"
    # the session lock is released and the cancelled turn left no trace
    for _ in range(50):
        try:
            _, rec = _chat(stub, sid, "after cancel")
            break
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.ABORTED
            threading.Event().wait(0.1)
    assert rec.turn_index == 1
    assert [t.query for t in store.turns(sid)] == ["after cancel"]


def test_trace_context_flows_from_dialogue_to_teacher(tmp_path, spans):
    """The teacher's span continues the dialogue's trace (context carried in gRPC metadata)."""
    settings = load_settings(overrides={"server": {"port": 0}})
    teacher = ScriptedTeacher()
    server = SomaServer(settings.server)
    server.add(
        HostedService(
            "soma.v1.TeacherService", lambda s: teacher_pb2_grpc.add_TeacherServiceServicer_to_server(teacher, s)
        )
    )
    server.add(
        dialogue.hosted(SqliteSessionStore(tmp_path / "s.db"), server.address, settings.dialogue, traced_channel)
    )
    server.start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = dialogue_pb2_grpc.DialogueServiceStub(channel)
            sid = _open(stub)
            _chat(stub, sid, "hi")
    finally:
        server.stop(0)
    by_name = {s.name: s for s in spans.get_finished_spans()}
    chat, generate = by_name["/soma.v1.DialogueService/Chat"], by_name["/soma.v1.TeacherService/Generate"]
    turn = by_name["soma.turn"]
    assert generate.context.trace_id == chat.context.trace_id
    # live adaptation off: the turn span is the Chat RPC's child and the teacher call the turn's
    assert turn.parent.span_id == chat.context.span_id
    assert generate.parent.span_id == turn.context.span_id
    assert chat.attributes["gen_ai.conversation.id"] == sid
    assert turn.attributes["soma.served_by"] == "TEACHER"


def test_turn_index_makes_retries_safe(stack):
    stub, _, store = stack
    sid = _open(stub)
    _, rec = _chat(stub, sid, "first", **{})
    responses = list(stub.Chat(dialogue_pb2.ChatRequest(session_id=sid, query="second", turn_index=2)))
    assert responses[-1].turn.turn_index == 2
    # the client lost that response and retries with the same index: refused, nothing stored twice
    code, msg = _code(lambda: list(stub.Chat(dialogue_pb2.ChatRequest(session_id=sid, query="second", turn_index=2))))
    assert code == grpc.StatusCode.ABORTED and "turn 3" in msg
    assert [t.query for t in store.turns(sid)] == ["first", "second"]


def test_busy_replica_refuses_extra_turns_and_keeps_answering_health(tmp_path):
    """More Chats than dialogue.max_concurrent_turns get RESOURCE_EXHAUSTED; the teacher calls of
    the admitted ones run on the internal server's own threads, so nothing deadlocks."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    settings = load_settings(
        overrides={"server": {"port": 0, "max_workers": 3}, "dialogue": {"max_concurrent_turns": 2}}
    )
    teacher = ScriptedTeacher()
    teacher.mode = "slow"
    server = SomaServer(settings.server)
    internal = server.enable_internal_server()
    server.add(
        HostedService(
            "soma.v1.TeacherService", lambda s: teacher_pb2_grpc.add_TeacherServiceServicer_to_server(teacher, s)
        )
    )
    server.add(
        dialogue.hosted(SqliteSessionStore(tmp_path / "s.db"), internal, settings.dialogue, grpc.insecure_channel)
    )
    server.start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = dialogue_pb2_grpc.DialogueServiceStub(channel)
            calls = []
            for _ in range(2):
                call = stub.Chat(dialogue_pb2.ChatRequest(session_id=_open(stub), query="slow"))
                assert next(call).chunk.text == "seen "
                calls.append(call)
            code, msg = _code(lambda: _chat(stub, _open(stub), "third"))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_concurrent_turns" in msg
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            teacher.release.set()
            assert [list(c)[-1].turn.turn_index for c in calls] == [1, 1]
    finally:
        server.stop(0)


def test_a_session_the_cluster_refused_is_not_kept(tmp_path):
    """Cluster mode registers each session as a SomaSession; when that fails the client gets
    UNAVAILABLE and no half-open session stays behind, so a retry with the same id works."""
    settings = load_settings(overrides={"server": {"port": 0, "grace_period_s": 1}})
    store = SqliteSessionStore(tmp_path / "sessions.db")
    calls = []

    def on_open(state):
        calls.append(state.session_id)
        if len(calls) == 1:
            raise ConnectionError("the Kubernetes API is unreachable")

    server = SomaServer(settings.server)
    server.add(dialogue.hosted(store, server.address, settings.dialogue, grpc.insecure_channel, on_open=on_open))
    server.start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = dialogue_pb2_grpc.DialogueServiceStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                _open(stub, session_id="k8s-1")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "retry OpenSession" in err.value.details() and "unreachable" in err.value.details()
            assert store.get("k8s-1") is None
            assert _open(stub, session_id="k8s-1") == "k8s-1"
            assert calls == ["k8s-1", "k8s-1"]
    finally:
        server.stop(0)
