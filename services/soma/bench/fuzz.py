"""`soma bench fuzz`: hypothesis-generated requests against every RPC of real servers.

The public Dialogue API (OpenSession, Chat, GetSession, CloseSession, FindSession), Health and Reflection get
requests with empty and extreme lengths, control characters, huge maps, out-of-range numbers, NaN
and infinities, and credentials that are missing, malformed or wrong. The server under test is
`soma serve --target dialogue` (adaptation off) in front of a stand-in teacher
(`soma.bench.instant_teacher`), so thousands of cases fit in minutes.

Every internal service runs as in the cluster layout, one `soma serve --target X` process each with
a service token, and is fuzzed with the valid token: TeacherService (the stand-in),
MiningService and TrainingService (a filesystem job queue, no worker: admitted jobs stay QUEUED,
and a session store holding two sessions that are building an adapter), GateService (the real
sentence encoder) and SurrogateService (a tiny random chat model, an empty adapter store). Each
internal service also gets calls with a missing or wrong service token.

What must hold: no INTERNAL, UNKNOWN or DATA_LOSS status; every server process stays up; every
stored transcript changed only through Chat calls that returned OK; and no adaptation job can be
planted: a job of a stored session exists only where a submission returned OK, and a submission
returns OK only with the session's own generation token and warm turns equal to the stored ones;
nor dropped: ForgetSessionJobs returns OK on a stored session only with that session's token.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

BAD_CODES = ("INTERNAL", "UNKNOWN", "DATA_LOSS")
PUBLIC_RPCS = (
    "OpenSession",
    "Chat",
    "GetSession",
    "CloseSession",
    "FindSession",
    "Credentials",
    "Health",
    "Reflection",
)
INTERNAL_RPCS = (
    "TeacherGenerate",
    "SubmitMiningJob",
    "GetMiningJob",
    "WatchMiningJob",
    "SubmitTrainingJob",
    "GetTrainingJob",
    "WatchTrainingJob",
    "ForgetSessionJobs",
    "Gap",
    "Accept",
    "ObserveTurn",
    "Compress",
    "SurrogateGenerate",
)
# calls to each internal service with a missing or wrong service token: all must be UNAUTHENTICATED
TOKEN_CHECKS = (
    "TeacherServiceToken",
    "MiningServiceToken",
    "TrainingServiceToken",
    "GateServiceToken",
    "SurrogateServiceToken",
)
RPCS = PUBLIC_RPCS + INTERNAL_RPCS + TOKEN_CHECKS
# what a Submit's generation_token is: the right one, or one of the wrong ones that follow it
TOKEN_KINDS = (
    "right",
    "random",
    "empty",
    "text",
    "other kind",
    "other generation",
    "other session",
    "other session's own",
    "case",
    "suffix",
    "non-ascii",
)
WATCH_TIMEOUT_S = 5.0  # a watched job never ends here (no worker): the stream runs into its deadline
TOKEN_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"  # secrets.token_urlsafe's


def _short(value: Any, limit: int = 120) -> str:
    if hasattr(value, "ListFields"):
        return "{" + _describe(value, limit) + "}"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(value) if hasattr(value, '__len__') else '?'})"


def _describe(message: Any, limit: int = 120) -> str:
    """A protobuf message in one short line: long strings cut, long repeated fields counted."""
    parts = []
    for field, value in message.ListFields():
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        if is_map:
            items = sorted(value.items())
            head = ", ".join(f"{_short(k, 40)}: {_short(v, 40)}" for k, v in items[:3])
            parts.append(f"{field.name}={{{head}{', ...' if len(items) > 3 else ''} ({len(items)} keys)}}")
        elif field.is_repeated:
            items = list(value)
            head = ", ".join(_short(v, limit) for v in items[:3])
            more = f", ... ({len(items)} items)" if len(items) > 3 else ""
            parts.append(f"{field.name}=[{head}{more}]")
        else:
            parts.append(f"{field.name}={_short(value, limit)}")
    return " ".join(parts)


class Recorder:
    """The status counts per RPC and the violations found."""

    def __init__(self, rpcs: tuple[str, ...]):
        self.codes: dict[str, Counter] = {rpc: Counter() for rpc in rpcs}
        self.seconds: Counter = Counter()  # time spent in each RPC's calls
        self.violations: list[str] = []

    def call(self, rpc: str, fn: Callable[[], Any], describe: Callable[[], str]) -> bool:
        """Run one call; True when it returned OK. A status in BAD_CODES is a violation."""
        started = time.perf_counter()
        try:
            return self._call(rpc, fn, describe)
        finally:
            self.seconds[rpc] += time.perf_counter() - started

    def _call(self, rpc: str, fn: Callable[[], Any], describe: Callable[[], str]) -> bool:
        try:
            fn()
        except grpc.RpcError as err:
            name = err.code().name if err.code() else "UNKNOWN"
            self.codes[rpc][name] += 1
            if name in BAD_CODES:
                self.violations.append(f"{rpc} -> {name} ({err.details()!r}) on {describe()[:400]}")
            return False
        except ValueError as err:  # the client refused to encode it (e.g. a value out of the field's range)
            self.codes[rpc]["CLIENT_REFUSED"] += 1
            del err
            return False
        self.codes[rpc]["OK"] += 1
        return True


def _settings(examples: int):
    from hypothesis import HealthCheck, settings

    return settings(
        max_examples=examples, database=None, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False
    )


def _strategies():
    from hypothesis import strategies as st

    from soma.v1 import common_pb2

    control = st.text(alphabet="\x00\x01\x07\x08\x1b\x7f\n\r\t\u2028\u202e\ufeff", max_size=40)
    long_text = st.builds(lambda c, n: c * n, st.characters(codec="utf-8"), st.sampled_from([1, 129, 4097, 70_000]))
    text = st.one_of(st.just(""), st.text(max_size=80), control, long_text)
    ids = st.one_of(text, st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", fullmatch=True))
    floats = st.floats(width=32, allow_nan=True, allow_infinity=True)
    params = st.builds(
        lambda n, t, p, s: common_pb2.GenerationParams(max_new_tokens=n, temperature=t, top_p=p, seed=s),
        st.one_of(st.integers(0, 16), st.integers(0, 2**32 - 1)),
        floats,
        floats,
        st.integers(0, 2**64 - 1),
    )
    labels = st.one_of(
        st.dictionaries(text, text, max_size=4),
        st.dictionaries(st.text(min_size=1, max_size=8), st.just("v"), min_size=30, max_size=300),
    )
    return st, text, ids, params, labels


def _sane_params():
    from hypothesis import strategies as st

    from soma.v1 import common_pb2

    return st.builds(
        lambda n, t, p: common_pb2.GenerationParams(max_new_tokens=n, temperature=t, top_p=p),
        st.integers(0, 16),
        st.floats(0, 2, width=32),
        st.floats(0, 1, width=32),
    )


def _chat_messages():
    """Chat message lists: any role value (unknown enum values included), or a well-formed chat."""
    from soma.v1 import common_pb2

    st, text, _, _, _ = _strategies()
    any_message = st.builds(
        lambda role, content: common_pb2.Message(role=role, content=content),
        st.integers(-(2**31), 2**31 - 1),  # unknown enum values included
        text,
    )
    known_message = st.builds(
        lambda role, content: common_pb2.Message(role=role, content=content),
        st.sampled_from([common_pb2.ROLE_SYSTEM, common_pb2.ROLE_USER, common_pb2.ROLE_ASSISTANT]),
        text,
    )
    last_user = st.builds(lambda content: common_pb2.Message(role=common_pb2.ROLE_USER, content=content), text)
    return any_message, st.one_of(
        st.lists(any_message, max_size=40),
        st.builds(lambda head, last: [*head, last], st.lists(known_message, max_size=8), last_user),
    )


def token_refusals(
    recorder: Recorder, rpc: str, methods: dict[str, Callable[[list], Any]], token: str, examples: int, seed: int
):
    """A hypothesis run: the service's methods called with a missing or wrong service token (each
    `methods[name](metadata)` makes one call with a request that would pass with the token); every
    call must be UNAUTHENTICATED."""
    from hypothesis import given
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    from soma.telemetry.tracing import SERVICE_TOKEN_HEADER

    near = [v for v in (token + "x", token[:-1], token.upper(), token[::-1], token[1:] + token[0]) if v != token]
    wrong = st.one_of(st.just(""), st.text(alphabet=TOKEN_ALPHABET, max_size=64), st.sampled_from(near)).filter(
        lambda sent: sent != token
    )

    @hypothesis_seed(seed)
    @_settings(examples)
    @given(method=st.sampled_from(sorted(methods)), sent=wrong)
    def check(method, sent):
        metadata = [(SERVICE_TOKEN_HEADER, sent)] if sent else []
        if recorder.call(rpc, lambda: methods[method](metadata), lambda: f"{method} with the token {sent!r}"):
            recorder.violations.append(f"{rpc}: {method} answered OK to the service token {sent!r}")

    return check


def fuzz(
    address: str, api_key: str, examples: int, seed: int = 0, teacher: str = "", service_token: str = ""
) -> dict[str, Any]:
    """Run `examples` cases per public RPC; returns the status counts and every violation found.
    With `teacher` and `service_token`, the internal TeacherService is fuzzed too, with the valid
    token and without it."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    from hypothesis import given
    from hypothesis import seed as hypothesis_seed

    from soma.client import open_channel
    from soma.v1 import common_pb2, dialogue_pb2, dialogue_pb2_grpc

    st, text, ids, params, labels = _strategies()
    channel = open_channel(address, api_key)
    stub = dialogue_pb2_grpc.DialogueServiceStub(channel)
    raw = grpc.insecure_channel(address)
    recorder = Recorder(PUBLIC_RPCS + (("TeacherGenerate", "TeacherServiceToken") if teacher else ()))
    call = recorder.call
    violations = recorder.violations
    kept = [stub.OpenSession(dialogue_pb2.OpenSessionRequest(session_id=f"fuzz-kept-{i}")).session.session_id
            for i in range(3)]  # fmt: skip
    ok_turns = Counter()
    every = _settings(examples)
    session_ids = st.one_of(st.sampled_from(kept), ids)

    @hypothesis_seed(seed)
    @every
    @given(sid=ids, system=text, lab=labels)
    def open_session(sid, system, lab):
        req = dialogue_pb2.OpenSessionRequest(session_id=sid, system_prompt=system, labels=lab)
        call("OpenSession", lambda: stub.OpenSession(req, timeout=30), lambda: _describe(req))

    sane_params = _sane_params()
    sane_query = st.text(min_size=1, max_size=200).filter(str.strip)

    @hypothesis_seed(seed + 1)
    @every
    @given(
        sid=session_ids,
        query=st.one_of(text, sane_query),
        p=st.one_of(params, sane_params),
        turn=st.one_of(st.just(0), st.integers(0, 2**32 - 1)),
    )
    def chat(sid, query, p, turn):
        req = dialogue_pb2.ChatRequest(session_id=sid, query=query, params=p, turn_index=turn)
        if call("Chat", lambda: list(stub.Chat(req, timeout=60)), lambda: _describe(req)) and sid in kept:
            ok_turns[sid] += 1

    @hypothesis_seed(seed + 2)
    @every
    @given(sid=session_ids, transcript=st.booleans())
    def get_session(sid, transcript):
        req = dialogue_pb2.GetSessionRequest(session_id=sid, include_transcript=transcript)
        call("GetSession", lambda: stub.GetSession(req, timeout=30), lambda: _describe(req))

    @hypothesis_seed(seed + 3)
    @every
    @given(sid=ids)
    def close_session(sid):
        if sid in kept:
            return  # the kept sessions carry the transcript invariant
        req = dialogue_pb2.CloseSessionRequest(session_id=sid)
        call("CloseSession", lambda: stub.CloseSession(req, timeout=30), lambda: _describe(req))

    hex_digests = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)

    @hypothesis_seed(seed + 17)
    @every
    @given(digest=st.one_of(text, hex_digests))
    def find_session(digest):
        req = dialogue_pb2.FindSessionRequest(history_digest=digest)
        call("FindSession", lambda: stub.FindSession(req, timeout=30), lambda: _describe(req))

    raw_stub = dialogue_pb2_grpc.DialogueServiceStub(raw)

    @hypothesis_seed(seed + 4)
    @every
    @given(header=st.one_of(text, st.builds(lambda t: "Bearer " + t, text), st.just("Bearer " + api_key + "x")))
    def credentials(header):
        metadata = [("authorization", header)] if header and header.isprintable() and header.isascii() else []
        req = dialogue_pb2.GetSessionRequest(session_id=kept[0])
        ok = call("Credentials", lambda: raw_stub.GetSession(req, metadata=metadata, timeout=30), lambda: header)
        if ok:
            violations.append(f"GetSession answered OK to the credential {header[:80]!r}")

    health = health_pb2_grpc.HealthStub(raw)

    @hypothesis_seed(seed + 5)
    @every
    @given(service=text)
    def health_check(service):
        req = health_pb2.HealthCheckRequest(service=service)
        call("Health", lambda: health.Check(req, timeout=30), lambda: _describe(req))

    reflection = reflection_pb2_grpc.ServerReflectionStub(raw)

    @hypothesis_seed(seed + 6)
    @every
    @given(kind=st.sampled_from(["file_by_filename", "file_containing_symbol", "list_services"]), arg=text)
    def reflect(kind, arg):
        req = reflection_pb2.ServerReflectionRequest(**{kind: arg})
        call(
            "Reflection",
            lambda: list(reflection.ServerReflectionInfo(iter([req]), timeout=30)),
            lambda: _describe(req),
        )

    runs = [open_session, chat, get_session, close_session, find_session, credentials, health_check, reflect]
    if teacher:
        from soma.telemetry.tracing import SERVICE_TOKEN_HEADER
        from soma.v1 import teacher_pb2, teacher_pb2_grpc

        teacher_channel = grpc.insecure_channel(teacher)
        generate = teacher_pb2_grpc.TeacherServiceStub(teacher_channel).Generate
        token = [(SERVICE_TOKEN_HEADER, service_token)]
        _, messages = _chat_messages()

        @hypothesis_seed(seed + 7)
        @every
        @given(msgs=messages, p=st.one_of(params, sane_params), request_id=text)
        def teacher_generate(msgs, p, request_id):
            req = teacher_pb2.TeacherServiceGenerateRequest(messages=msgs, params=p, request_id=request_id)
            call("TeacherGenerate", lambda: list(generate(req, metadata=token, timeout=30)), lambda: _describe(req))

        plain_generate = teacher_pb2.TeacherServiceGenerateRequest(
            messages=[common_pb2.Message(role=common_pb2.ROLE_USER, content="Say yes.")]
        )
        call("TeacherGenerate", lambda: list(generate(plain_generate, metadata=token, timeout=30)), str)
        teacher_methods = {"Generate": lambda md: list(generate(plain_generate, metadata=md, timeout=30))}
        runs += [
            teacher_generate,
            token_refusals(recorder, "TeacherServiceToken", teacher_methods, service_token, examples, seed + 8),
        ]
    started = time.perf_counter()
    for sid in kept:  # one plain turn each first: the transcripts the invariant watches are not empty
        plain = dialogue_pb2.ChatRequest(session_id=sid, query="Say yes.")
        if call("Chat", lambda req=plain: list(stub.Chat(req, timeout=60)), lambda req=plain: str(req)):
            ok_turns[sid] += 1
    for run in runs:
        run()
    for sid in kept:  # the transcript changed only by the Chat calls that returned OK
        got = stub.GetSession(dialogue_pb2.GetSessionRequest(session_id=sid, include_transcript=True), timeout=30)
        if got.session.turn_count != ok_turns[sid] or len(got.transcript) != ok_turns[sid]:
            violations.append(
                f"session {sid}: {got.session.turn_count} turns stored, {ok_turns[sid]} Chats returned OK"
            )
    channel.close()
    raw.close()
    if teacher:
        teacher_channel.close()
    return {
        "examples_per_rpc": examples,
        "seed": seed,
        "seconds": time.perf_counter() - started,
        "codes": {rpc: dict(c) for rpc, c in recorder.codes.items()},
        "call_seconds": dict(recorder.seconds),
        "kept_session_turns": dict(ok_turns),
        "violations": violations,
    }


# -- the job services ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredTurn:
    query: str
    answer: str
    by_teacher: bool
    finish_reason: str  # "stop" | "length"


@dataclass(frozen=True)
class JobSession:
    """A session put into the job services' session store, building adapter `generation` (phase
    ADAPTING), as the adaptation driver leaves it before it submits the generation's jobs: the
    only jobs that may be admitted are this generation's, signed with `secret`."""

    session_id: str
    generation: int
    system_prompt: str
    turns: tuple[StoredTurn, ...]  # turn indices 1, 2, ...
    warm_turns: tuple[int, ...]  # the live record's: a training job must name exactly these
    secret: str

    def token(self, kind: str, generation: int | None = None, session_id: str | None = None) -> str:
        from soma.session.job_token import job_token

        return job_token(
            self.secret, kind, session_id or self.session_id, self.generation if generation is None else generation
        )

    def turn(self, index: int) -> StoredTurn | None:
        return self.turns[index - 1] if 1 <= index <= len(self.turns) else None

    def teacher_indices(self) -> list[int]:
        return [i for i, t in enumerate(self.turns, start=1) if t.by_teacher]

    def context(self, index: int) -> list[dict[str, str]]:
        """S_t of turn `index` as the store builds it: the system prompt, the earlier turns, the query."""
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        for earlier in self.turns[: index - 1]:
            messages += [{"role": "user", "content": earlier.query}, {"role": "assistant", "content": earlier.answer}]
        return [*messages, {"role": "user", "content": self.turns[index - 1].query}]


_JOB_SESSIONS = (
    (
        "fuzz-jobs-a",
        1,
        "Answer in one line.",
        (
            StoredTurn("hello world python code", "the answer is code", True, "stop"),
            StoredTurn("print a list", "print the list value", True, "length"),
            StoredTurn("what is a dict", "a dict maps keys to values.\nSee the docs!", True, "stop"),
        ),
        (),
    ),
    (
        "fuzz-jobs-b",
        2,
        "",
        (
            StoredTurn("sort a list", "use sorted(xs)", True, "stop"),
            StoredTurn("and reversed?", "sorted(xs, reverse=True)", True, "stop"),
            StoredTurn("thanks", "you are welcome", False, "stop"),  # served by the surrogate
            StoredTurn("a set?", "sorted(set(xs))", True, "length"),
        ),
        (1, 2, 4),
    ),
)


def put_job_sessions(path: Path) -> list[JobSession]:
    """Write the job sessions into a SQLite session store at `path` (the store the job services read)."""
    import secrets

    from soma.session.live import LiveRecord, to_dict
    from soma.session.machine import Adaptation
    from soma.session.reconcile import LiveSession
    from soma.session.records import Phase, ServedBy, SessionState, Turn
    from soma.storage.session_store import SqliteSessionStore

    store = SqliteSessionStore(path)
    sessions = []
    for session_id, generation, system_prompt, turns, warm_turns in _JOB_SESSIONS:
        now = time.time()
        store.create(SessionState(session_id=session_id, created_at=now, updated_at=now, system_prompt=system_prompt))
        for i, t in enumerate(turns, start=1):
            by = ServedBy.TEACHER if t.by_teacher else ServedBy.SURROGATE
            store.append_turn(
                session_id,
                Turn(i, t.query, t.answer, by, "fuzz", Phase.WARMUP, 1, 1, 1.0, 1.0, t.finish_reason),
                None,
            )
        secret = secrets.token_hex(32)
        live = LiveSession(adaptation=Adaptation(phase=Phase.ADAPTING, generation=generation))
        record = LiveRecord(live=live, warm_turns=warm_turns, job_secret=secret)
        if not store.put_live(session_id, to_dict(record), 0, Phase.ADAPTING, generation):
            raise RuntimeError(f"could not store the live record of {session_id}")
        sessions.append(JobSession(session_id, generation, system_prompt, turns, warm_turns, secret))
    return sessions


def _store_snapshot(path: Path, sessions: list[JobSession]) -> dict[str, Any]:
    from soma.session.records import turn_to_dict
    from soma.storage.session_store import SqliteSessionStore

    store = SqliteSessionStore(path)
    return {
        s.session_id: (store.get_live(s.session_id), [turn_to_dict(t) for t in store.turns(s.session_id)])
        for s in sessions
    }


def _messages_of(messages) -> list[dict[str, str]] | None:
    """Chat messages as the services read them, or None where they refuse them (an unknown role,
    no user message last)."""
    roles = {1: "system", 2: "user", 3: "assistant"}
    out = [{"role": roles.get(m.role, ""), "content": m.content} for m in messages]
    if not out or any(not m["role"] for m in out) or out[-1]["role"] != "user":
        return None
    return out


def equal_to_store(session: JobSession, warm_turns) -> bool:
    """Whether the warm turns name teacher turns of the session and carry nothing that differs
    from the stored turns (a context or answer left empty is read from the store)."""
    if not warm_turns:
        return False
    for w in warm_turns:
        turn = session.turn(w.turn_index)
        if turn is None or not turn.by_teacher:
            return False
        if w.context and _messages_of(w.context) != session.context(w.turn_index):
            return False
        if w.teacher_answer and w.teacher_answer != turn.answer:
            return False
        if w.served_context:
            served = _messages_of(w.served_context)
            if served is None or served[-1]["content"] != turn.query:
                return False
    return True


def _warm_strategies(sessions: list[JobSession]):
    """Warm turns: those of a stored session (by index, or with the stored context, answer and a
    served context), the same with one field changed, random ones, and huge repeated fields."""
    from hypothesis import strategies as st

    from soma.v1 import common_pb2

    _, text, _, _, _ = _strategies()
    any_message, _ = _chat_messages()
    by_id = {s.session_id: s for s in sessions}
    to_proto = {"system": common_pb2.ROLE_SYSTEM, "user": common_pb2.ROLE_USER, "assistant": common_pb2.ROLE_ASSISTANT}

    def proto(messages):
        return [common_pb2.Message(role=to_proto[m["role"]], content=m["content"]) for m in messages]

    def stored(sid: str, index: int, fill: tuple[bool, bool, bool], tamper: str) -> common_pb2.WarmTurn:
        session = by_id[sid]
        turn = session.turn(index)
        w = common_pb2.WarmTurn(turn_index=index)
        if fill[0] or tamper == "context":
            context = session.context(index)
            if tamper == "context":
                context = [*context[:-1], {"role": "user", "content": context[-1]["content"] + " (changed)"}]
            w.context.extend(proto(context))
        if fill[1] or tamper == "answer":
            w.teacher_answer = turn.answer + (" (changed)" if tamper == "answer" else "")
        if fill[2] or tamper == "served":
            query = turn.query + ("?" if tamper == "served" else "")
            w.served_context.extend(
                proto([{"role": "system", "content": "summary"}, {"role": "user", "content": query}])
            )
        if tamper == "index":
            w.turn_index = next(i for i in range(1, 10) if i not in session.teacher_indices())
        return w

    def stored_list(sid: str):
        session = by_id[sid]
        one = st.builds(
            stored,
            st.just(sid),
            st.sampled_from(session.teacher_indices()),
            st.tuples(st.booleans(), st.booleans(), st.booleans()),
            st.just(""),
        )
        exact = st.just([common_pb2.WarmTurn(turn_index=i) for i in (session.warm_turns or session.teacher_indices())])
        tampered = st.builds(
            lambda ws, bad: [*ws, bad],
            st.lists(one, max_size=3),
            st.builds(
                stored,
                st.just(sid),
                st.sampled_from(session.teacher_indices()),
                st.tuples(st.booleans(), st.booleans(), st.booleans()),
                st.sampled_from(["context", "answer", "served", "index"]),
            ),
        )
        return st.one_of(exact, st.lists(one, min_size=1, max_size=5), tampered)

    random_warm = st.builds(
        lambda i, ctx, answer, finish, served: common_pb2.WarmTurn(
            turn_index=i, context=ctx, teacher_answer=answer, teacher_finish_reason=finish, served_context=served
        ),
        st.one_of(st.integers(0, 6), st.integers(0, 2**32 - 1)),
        st.lists(any_message, max_size=6),
        text,
        st.integers(-(2**31), 2**31 - 1),
        st.lists(any_message, max_size=6),
    )
    short = st.builds(lambda role: common_pb2.Message(role=role, content="x"), st.integers(-1, 4))
    huge = st.one_of(
        st.builds(
            lambda i, n: [common_pb2.WarmTurn(turn_index=i)] * n, st.integers(0, 6), st.sampled_from([1_000, 20_000])
        ),
        st.builds(
            lambda i, m, n: [common_pb2.WarmTurn(turn_index=i, context=[m] * n, served_context=[m] * n)],
            st.integers(0, 6),
            short,
            st.sampled_from([1_000, 20_000]),
        ),
    )

    def for_session(sid: str):
        branches = [st.lists(random_warm, max_size=6), huge]
        if sid in by_id:
            branches = [stored_list(sid), stored_list(sid), *branches]
        return st.one_of(*branches)

    return for_session


# ForgetSessionJobs walks every generation up to the one named, without a token for a session that
# is not stored: the generated ones stay below this (4,294,967,295 would keep a thread for days)
FORGET_GENERATIONS = 1_000


def _submit_strategy(kind: str, sessions: list[JobSession]):
    """(session_id, generation, generation_token, warm_turns, what the token is) of a Submit (kind
    mine or train; for kind forget: of a ForgetSessionJobs, with no warm turns), a third of each:
    signed (a stored session, its generation, the right token), near (a stored session, a wrong
    token: random, empty, any text, another kind's, another generation's, another session's, the
    right one changed in case, length or one non-ASCII character) and random (any id, generation
    and token)."""
    from hypothesis import strategies as st

    from soma.session.job_token import job_token

    _, text, ids, _, _ = _strategies()
    by_id = {s.session_id: s for s in sessions}
    warm_for = _warm_strategies(sessions)
    other_kind = {"mine": "train", "train": "mine", "forget": "mine"}[kind]
    small = st.one_of(st.sampled_from([0, 1, 2, 3]), st.integers(0, FORGET_GENERATIONS))
    generations = st.one_of(st.sampled_from([0, 1, 2, 3]), st.integers(0, 2**32 - 1))

    @st.composite
    def submit(draw):
        mode = draw(st.sampled_from(["signed", "near", "random"]))
        if mode == "random":
            sid = draw(st.one_of(st.sampled_from(sorted(by_id)), ids))
        else:
            sid = draw(st.sampled_from(sorted(by_id)))
        session = by_id.get(sid)
        if kind == "forget":  # any generation only where the token check refuses it before the walk
            what = "right" if mode == "signed" else draw(st.sampled_from(TOKEN_KINDS[mode == "near" :]))
            generation = draw(generations if session and what != "right" else small)
        elif mode == "signed":
            generation, what = session.generation, "right"
        else:
            generation = draw(st.one_of(st.just(session.generation), generations) if session else generations)
            what = draw(st.sampled_from(TOKEN_KINDS[mode == "near" :]))
        secret = session.secret if session else draw(st.binary(min_size=32, max_size=32)).hex()
        other = next(s for s in sessions if s.session_id != sid)
        right = job_token(secret, kind, sid, generation)
        token = {
            "right": lambda: right,
            "random": lambda: draw(st.binary(min_size=32, max_size=32)).hex(),
            "empty": lambda: "",
            "text": lambda: draw(text),
            "other kind": lambda: job_token(secret, other_kind, sid, generation),
            "other generation": lambda: job_token(
                secret, kind, sid, generation + draw(st.sampled_from([-1, 1, 2**32]))
            ),
            "other session": lambda: job_token(secret, kind, other.session_id, generation),
            "other session's own": lambda: other.token(kind),
            "case": lambda: right.upper(),
            "suffix": lambda: right + "0",
            "non-ascii": lambda: right[:-1] + draw(st.sampled_from(["é", "\u2028", "\x00", "０"])),
        }[what]()
        return sid, generation, token, [] if kind == "forget" else draw(warm_for(sid)), what

    return submit()


def fuzz_jobs(
    recorder: Recorder,
    mining_address: str,
    training_address: str,
    service_token: str,
    sessions: list[JobSession],
    results_dir: Path,
    examples: int,
    seed: int,
) -> tuple[list[Callable[[], None]], Callable[[], dict[str, Any]]]:
    """The hypothesis runs for MiningService and TrainingService, and the check that follows them:
    no job of a stored session exists but those a Submit returned OK for (and no ForgetSessionJobs
    with the session's token removed since), and those carried the session's token and its stored
    warm turns; ForgetSessionJobs returned OK on a stored session only with its token."""
    from hypothesis import given
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    from soma.session.job_token import job_name
    from soma.telemetry.tracing import SERVICE_TOKEN_HEADER
    from soma.v1 import common_pb2, mining_pb2, mining_pb2_grpc, training_pb2, training_pb2_grpc

    _, text, ids, _, _ = _strategies()
    every = _settings(examples)
    token = [(SERVICE_TOKEN_HEADER, service_token)]
    mining = mining_pb2_grpc.MiningServiceStub(grpc.insecure_channel(mining_address))
    training = training_pb2_grpc.TrainingServiceStub(grpc.insecure_channel(training_address))
    by_id = {s.session_id: s for s in sessions}
    ok_jobs: set[str] = set()
    tried: set[tuple[str, str, int]] = set()  # (kind, stored session, generation) of every Submit
    # in call order: ("submit", kind, session, generation) of each OK Submit, ("forget", session,
    # up_to_generation) of each OK ForgetSessionJobs of a stored session with its token
    events: list[tuple] = []

    def submitted(rpc: str, kind: str, sid: str, generation: int, sent: str, warm, what: str, describe) -> None:
        """After a Submit returned OK: it must have been admissible."""
        session = by_id.get(sid)
        ok_jobs.add(job_name(kind, sid, generation))
        events.append(("submit", kind, sid, generation))
        if session is None or generation != session.generation or sent != session.token(kind):
            recorder.violations.append(
                f"{rpc} returned OK with a token that is not the session's ({what}): {describe()[:400]}"
            )
        elif not equal_to_store(session, warm):
            recorder.violations.append(
                f"{rpc} returned OK on warm turns that differ from the store: {describe()[:400]}"
            )

    @hypothesis_seed(seed + 20)
    @every
    @given(sub=_submit_strategy("mine", sessions))
    def submit_mining(sub):
        sid, generation, sent, warm, what = sub
        req = mining_pb2.SubmitMiningJobRequest(
            session_id=sid, generation=generation, generation_token=sent, warm_turns=warm
        )
        if sid in by_id:
            tried.add(("mine", sid, generation))
        if recorder.call(
            "SubmitMiningJob", lambda: mining.SubmitMiningJob(req, metadata=token, timeout=30), lambda: _describe(req)
        ):
            submitted("SubmitMiningJob", "mine", sid, generation, sent, warm, what, lambda: _describe(req))

    mined_case = st.builds(
        lambda i, p, a, h, f: mining_pb2.MinedCase(
            turn_index=i, verbalized_prompt=p, teacher_answer=a, hardness=h, finish_reason=f
        ),
        st.integers(0, 2**32 - 1),
        text,
        text,
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-(2**31), 2**31 - 1),
    )

    def rarely(strategy, usual):
        """`strategy` in one case of five, else `usual` (the mining job's id, no deprecated fields), so
        most training submissions get as far as the admission check."""
        unusual = st.sampled_from([False, False, False, False, True])  # hypothesis leans to the first
        return st.tuples(unusual, strategy).map(lambda pick: pick[1] if pick[0] else usual)

    @hypothesis_seed(seed + 21)
    @every
    @given(
        sub=_submit_strategy("train", sessions),
        mining_id=rarely(ids, None),
        cases=rarely(st.lists(mined_case, min_size=1, max_size=3), []),
        hardness=rarely(st.lists(st.floats(), min_size=1, max_size=3), []),
    )
    def submit_training(sub, mining_id, cases, hardness):
        sid, generation, sent, warm, what = sub
        req = training_pb2.SubmitTrainingJobRequest(
            session_id=sid,
            generation=generation,
            generation_token=sent,
            warm_turns=warm,
            mining_job_id=f"mine-{sid}-{generation}" if mining_id is None else mining_id,
            mined_cases=cases,
            warm_hardness=hardness,
        )
        if sid in by_id:
            tried.add(("train", sid, generation))
        if recorder.call(
            "SubmitTrainingJob",
            lambda: training.SubmitTrainingJob(req, metadata=token, timeout=30),
            lambda: _describe(req),
        ):
            submitted("SubmitTrainingJob", "train", sid, generation, sent, warm, what, lambda: _describe(req))

    known = [job_name(k, s.session_id, g) for k in ("mine", "train") for s in sessions for g in (1, 2)]
    job_ids = st.one_of(
        text,
        ids,
        st.sampled_from(known),
        st.builds(job_name, st.sampled_from(["mine", "train", "x"]), ids, st.integers(0, 2**32 - 1)),
        st.sampled_from(["../../../etc/passwd", "mine-../../x", "a/b", "\x00", ".", "..", "mine-" + "a" * 300]),
        st.builds(lambda jid, tail: jid + tail, st.sampled_from(known), st.sampled_from(["/", "/x", "/..", "\x00"])),
    )

    @hypothesis_seed(seed + 22)
    @every
    @given(jid=job_ids)
    def get_mining(jid):
        req = mining_pb2.GetMiningJobRequest(job_id=jid)
        recorder.call(
            "GetMiningJob", lambda: mining.GetMiningJob(req, metadata=token, timeout=30), lambda: _describe(req)
        )

    @hypothesis_seed(seed + 23)
    @every
    @given(jid=job_ids)
    def get_training(jid):
        req = training_pb2.GetTrainingJobRequest(job_id=jid)
        recorder.call(
            "GetTrainingJob", lambda: training.GetTrainingJob(req, metadata=token, timeout=30), lambda: _describe(req)
        )

    def watched(stream, follow: bool) -> None:
        """To the deadline (the job never ends here), or the first update, then cancelled."""
        if follow:
            list(stream)
            return
        next(stream, None)  # NOT_FOUND and other refusals are raised here
        stream.cancel()

    follow = st.integers(0, 99).map(lambda n: n < 3)

    @hypothesis_seed(seed + 24)
    @every
    @given(jid=job_ids, to_deadline=follow)
    def watch_mining(jid, to_deadline):
        req = mining_pb2.WatchMiningJobRequest(job_id=jid)
        recorder.call(
            "WatchMiningJob",
            lambda: watched(mining.WatchMiningJob(req, metadata=token, timeout=WATCH_TIMEOUT_S), to_deadline),
            lambda: _describe(req),
        )

    @hypothesis_seed(seed + 25)
    @every
    @given(jid=job_ids, to_deadline=follow)
    def watch_training(jid, to_deadline):
        req = training_pb2.WatchTrainingJobRequest(job_id=jid)
        recorder.call(
            "WatchTrainingJob",
            lambda: watched(training.WatchTrainingJob(req, metadata=token, timeout=WATCH_TIMEOUT_S), to_deadline),
            lambda: _describe(req),
        )

    first = sessions[0]
    warm = [common_pb2.WarmTurn(turn_index=i) for i in first.teacher_indices()]
    signed_mining = mining_pb2.SubmitMiningJobRequest(
        session_id=first.session_id, generation=first.generation, warm_turns=warm, generation_token=first.token("mine")
    )
    signed_training = training_pb2.SubmitTrainingJobRequest(
        session_id=first.session_id,
        generation=first.generation,
        warm_turns=warm,
        mining_job_id=job_name("mine", first.session_id, first.generation),
        generation_token=first.token("train"),
    )
    mine_id = job_name("mine", first.session_id, first.generation)
    mining_methods = {
        "SubmitMiningJob": lambda md: mining.SubmitMiningJob(signed_mining, metadata=md, timeout=30),
        "GetMiningJob": lambda md: mining.GetMiningJob(
            mining_pb2.GetMiningJobRequest(job_id=mine_id), metadata=md, timeout=30
        ),
        "WatchMiningJob": lambda md: list(
            mining.WatchMiningJob(
                mining_pb2.WatchMiningJobRequest(job_id=mine_id), metadata=md, timeout=WATCH_TIMEOUT_S
            )
        ),
    }
    training_methods = {
        "SubmitTrainingJob": lambda md: training.SubmitTrainingJob(signed_training, metadata=md, timeout=30),
        "GetTrainingJob": lambda md: training.GetTrainingJob(
            training_pb2.GetTrainingJobRequest(job_id=mine_id.replace("mine", "train", 1)), metadata=md, timeout=30
        ),
        "WatchTrainingJob": lambda md: list(
            training.WatchTrainingJob(
                training_pb2.WatchTrainingJobRequest(job_id=mine_id.replace("mine", "train", 1)),
                metadata=md,
                timeout=WATCH_TIMEOUT_S,
            )
        ),
        "ForgetSessionJobs": lambda md: training.ForgetSessionJobs(
            training_pb2.ForgetSessionJobsRequest(
                session_id=first.session_id, up_to_generation=1, generation_token=first.token("forget", 1)
            ),
            metadata=md,
            timeout=30,
        ),
    }

    @hypothesis_seed(seed + 28)
    @every
    @given(sub=_submit_strategy("forget", sessions))
    def forget(sub):
        sid, up_to, sent, _, what = sub
        req = training_pb2.ForgetSessionJobsRequest(session_id=sid, up_to_generation=up_to, generation_token=sent)
        if not recorder.call(
            "ForgetSessionJobs",
            lambda: training.ForgetSessionJobs(req, metadata=token, timeout=30),
            lambda: _describe(req),
        ):
            return
        session = by_id.get(sid)
        if session is not None and sent != session.token("forget", up_to):
            recorder.violations.append(
                f"ForgetSessionJobs returned OK on a stored session with a token that is not its own ({what}): "
                f"{_describe(req)[:400]}"
            )
        elif session is not None:
            events.append(("forget", sid, up_to))

    runs = [
        submit_mining,
        submit_training,
        get_mining,
        get_training,
        watch_mining,
        watch_training,
        forget,
        token_refusals(recorder, "MiningServiceToken", mining_methods, service_token, examples, seed + 26),
        token_refusals(recorder, "TrainingServiceToken", training_methods, service_token, examples, seed + 27),
    ]

    def expected() -> set[str]:
        """The jobs that must exist: each OK Submit's, less those an OK Forget of its session removed
        later (generations 1..up_to_generation; 0 = all of them)."""
        jobs: set[tuple[str, str, int]] = set()
        for event in events:
            if event[0] == "submit":
                jobs.add(event[1:])
            else:
                _, sid, up_to = event
                jobs = {(k, s, g) for k, s, g in jobs if s != sid or (up_to and g > up_to)}
        return {job_name(*job) for job in jobs}

    def check() -> dict[str, Any]:
        """After the runs: a stored session's job exists exactly where a Submit returned OK and no
        Forget with the session's token removed it since."""
        wanted = expected()
        gets = {"mine": mining.GetMiningJob, "train": training.GetTrainingJob}
        requests = {"mine": mining_pb2.GetMiningJobRequest, "train": training_pb2.GetTrainingJobRequest}
        looked = tried | {(k, s.session_id, g) for k in gets for s in sessions for g in (0, 1, 2, 3, s.generation)}
        for kind, sid, generation in sorted(looked):
            jid = job_name(kind, sid, generation)
            try:
                gets[kind](requests[kind](job_id=jid), metadata=token, timeout=30)
                exists = True
            except grpc.RpcError as err:
                if err.code() is not grpc.StatusCode.NOT_FOUND:
                    recorder.violations.append(
                        f"Get of job {jid} after the fuzz: {err.code().name} ({err.details()!r})"
                    )
                    continue
                exists = False
            if exists and jid not in ok_jobs:
                recorder.violations.append(f"job {jid} exists, but no Submit of it returned OK")
            elif exists and jid not in wanted:
                recorder.violations.append(f"job {jid} exists, but its session's driver had it forgotten")
            if jid in wanted and not exists:
                recorder.violations.append(f"job {jid}: its Submit returned OK, but the job does not exist")
        prefix = "soma-submitted-"  # the job queue's submission marker, one file per job in the result folder
        queued = sorted(p.name[len(prefix) :] for p in results_dir.glob(prefix + "*"))
        for jid in queued:
            if jid not in ok_jobs:
                recorder.violations.append(f"job {jid} is in the queue, but no Submit of it returned OK")
            elif jid not in wanted:
                recorder.violations.append(f"job {jid} is in the queue, but its session's driver had it forgotten")
        return {
            "jobs_submitted_ok": sorted(ok_jobs),
            "forgotten_with_token": [f"{e[1]} up to {e[2] or 'all'}" for e in events if e[0] == "forget"],
            "jobs_expected": sorted(wanted),
            "jobs_in_queue": queued,
            "job_ids_looked_up": len(looked),
        }

    return runs, check


# -- the gate and the surrogate --------------------------------------------------------------------


def fuzz_gate(
    recorder: Recorder, address: str, service_token: str, examples: int, seed: int
) -> list[Callable[[], None]]:
    """The hypothesis runs for GateService: modest texts (the encoder runs on the CPU) with a few
    past the length limit, empty and over-limit batches, NaN and infinite thresholds, unknown enum
    values, huge turn counts and budgets."""
    import math

    from hypothesis import given
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    from soma.telemetry.tracing import SERVICE_TOKEN_HEADER
    from soma.v1 import gate_pb2, gate_pb2_grpc

    _, _, ids, _, _ = _strategies()
    every = _settings(examples)
    token = [(SERVICE_TOKEN_HEADER, service_token)]
    gate = gate_pb2_grpc.GateServiceStub(grpc.insecure_channel(address))
    control = st.text(alphabet="\x00\x01\x07\x08\x1b\x7f\n\r\t\u2028\u202e\ufeff", max_size=40)
    sentences = st.text(alphabet="ab .!?\n", max_size=200)
    long_text = st.builds(
        lambda c, n: c * n, st.characters(codec="utf-8"), st.sampled_from([129, 2049, 32_001, 70_000])
    )
    text = st.one_of(st.just(""), st.text(max_size=80), control, sentences, long_text)
    pair = st.builds(lambda a, b: gate_pb2.AnswerPair(a=a, b=b), text, text)
    over_limit = st.sampled_from([257, 100_000])  # past gate.max_pairs (256): refused before any encoding
    pairs = st.one_of(
        st.lists(pair, max_size=4),
        st.builds(lambda n: [gate_pb2.AnswerPair(a="x", b="y")] * n, over_limit),
    )
    special = st.sampled_from([0.0, -0.0, 5e-324, 1e-300, 0.5, 1.0, -1.0, 2.0, 1e300, math.nan, math.inf, -math.inf])
    number = st.one_of(special, st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 1))
    enum = st.one_of(st.integers(0, 3), st.integers(-(2**31), 2**31 - 1))
    queries = st.lists(text, max_size=4)
    uint = st.one_of(st.integers(0, 8), st.integers(0, 2**32 - 1))
    budget = st.one_of(st.integers(0, 2_000), st.integers(0, 2**32 - 1))

    @hypothesis_seed(seed + 30)
    @every
    @given(ps=pairs)
    def gap(ps):
        req = gate_pb2.GapRequest(pairs=ps)
        recorder.call("Gap", lambda: gate.Gap(req, metadata=token, timeout=60), lambda: _describe(req))

    example = st.builds(
        lambda t, o, n: gate_pb2.AcceptanceExample(teacher_answer=t, old_answer=o, new_answer=n), text, text, text
    )
    batch = st.one_of(
        st.lists(example, max_size=4),
        st.builds(lambda n: [gate_pb2.AcceptanceExample(teacher_answer="x")] * n, over_limit),
    )

    open_unit = st.floats(0, 1, exclude_min=True, exclude_max=True)
    some_text = st.one_of(st.text(min_size=1, max_size=80), long_text)

    def accept_request(sid, b, eps, delta, bound, max_gap, query, warm, loc):
        return gate_pb2.AcceptRequest(
            session_id=sid,
            batch=b,
            epsilon=eps,
            delta=delta,
            bound=bound,
            max_mean_gap=max_gap,
            current_query=query,
            warm_queries=warm,
            min_locality=loc,
        )

    # anything, and requests that pass the argument checks but for the thresholds (NaN, inf, < 0 ...)
    accept_requests = st.one_of(
        st.builds(accept_request, ids, batch, number, number, enum, number, text, queries, number),
        st.builds(
            accept_request,
            ids,
            st.lists(example, min_size=1, max_size=4),
            number,
            open_unit,
            st.sampled_from([gate_pb2.BOUND_HOEFFDING, gate_pb2.BOUND_BERNSTEIN, gate_pb2.BOUND_NONE]),
            number,
            some_text,
            st.lists(some_text, min_size=1, max_size=4),
            st.one_of(st.just(0.0), number),
        ),
    )

    @hypothesis_seed(seed + 31)
    @every
    @given(req=accept_requests)
    def accept(req):
        recorder.call("Accept", lambda: gate.Accept(req, metadata=token, timeout=60), lambda: _describe(req))

    def observe_request(sid, q, warm, loc, shadow, max_gap):
        return gate_pb2.ObserveTurnRequest(
            session_id=sid, query=q, warm_queries=warm, min_locality=loc, shadow=shadow, max_gap=max_gap
        )

    observe = st.one_of(
        st.builds(observe_request, ids, text, queries, number, st.one_of(st.none(), pair), number),
        st.builds(
            observe_request,
            ids,
            some_text,
            st.lists(some_text, min_size=1, max_size=4),
            number,
            st.one_of(st.none(), pair),
            number,
        ),
    )

    @hypothesis_seed(seed + 32)
    @every
    @given(req=observe)
    def observe_turn(req):
        recorder.call("ObserveTurn", lambda: gate.ObserveTurn(req, metadata=token, timeout=60), lambda: _describe(req))

    turns = st.one_of(
        st.lists(pair, max_size=6),
        st.lists(st.builds(lambda a, b: gate_pb2.AnswerPair(a=a, b=b), sentences, sentences), max_size=12),
        st.builds(lambda n: [gate_pb2.AnswerPair()] * n, st.sampled_from([1_000, 50_000])),
    )

    @hypothesis_seed(seed + 33)
    @every
    @given(
        system=text,
        ts=turns,
        query=text,
        recent=uint,
        chars=budget,
        place=enum,
        window=uint,
        obs=st.one_of(st.none(), observe),
    )
    def compress(system, ts, query, recent, chars, place, window, obs):
        req = gate_pb2.CompressRequest(
            system_prompt=system,
            turns=ts,
            query=query,
            recent_turns=recent,
            summary_chars=chars,
            summary_place=place,
            max_summarized_turns=window,
            observe=obs,
        )
        recorder.call("Compress", lambda: gate.Compress(req, metadata=token, timeout=60), lambda: _describe(req))

    # edge cases run once each: a full batch at the limit and a long history summarized in full
    full = gate_pb2.GapRequest(pairs=[gate_pb2.AnswerPair(a="x", b="y")] * 256)
    recorder.call("Gap", lambda: gate.Gap(full, metadata=token, timeout=120), lambda: "256 pairs")
    long_history = gate_pb2.CompressRequest(
        turns=[gate_pb2.AnswerPair(a=f"question {i}. more.", b=f"answer {i}. more.") for i in range(200)],
        query="and now?",
        recent_turns=2,
        summary_chars=400,
    )
    recorder.call("Compress", lambda: gate.Compress(long_history, metadata=token, timeout=120), lambda: "200 turns")

    pair1 = [gate_pb2.AnswerPair(a="a", b="b")]
    methods = {
        "Gap": lambda md: gate.Gap(gate_pb2.GapRequest(pairs=pair1), metadata=md, timeout=30),
        "Accept": lambda md: gate.Accept(
            gate_pb2.AcceptRequest(
                batch=[gate_pb2.AcceptanceExample(teacher_answer="a", old_answer="b", new_answer="a")],
                delta=0.1,
                bound=gate_pb2.BOUND_NONE,
            ),
            metadata=md,
            timeout=30,
        ),
        "ObserveTurn": lambda md: gate.ObserveTurn(
            gate_pb2.ObserveTurnRequest(query="q", warm_queries=["w"]), metadata=md, timeout=30
        ),
        "Compress": lambda md: gate.Compress(gate_pb2.CompressRequest(query="q"), metadata=md, timeout=30),
    }
    return [
        gap,
        accept,
        observe_turn,
        compress,
        token_refusals(recorder, "GateServiceToken", methods, service_token, examples, seed + 34),
    ]


def fuzz_surrogate(
    recorder: Recorder, address: str, service_token: str, sessions: list[JobSession], examples: int, seed: int
) -> list[Callable[[], None]]:
    """The hypothesis run for SurrogateService.Generate: random chats and sampling settings, and
    adapters that are not in the (empty) adapter store."""
    from hypothesis import given
    from hypothesis import seed as hypothesis_seed

    from soma.telemetry.tracing import SERVICE_TOKEN_HEADER
    from soma.v1 import common_pb2, surrogate_pb2, surrogate_pb2_grpc

    st, text, ids, params, _ = _strategies()
    every = _settings(examples)
    token = [(SERVICE_TOKEN_HEADER, service_token)]
    generate = surrogate_pb2_grpc.SurrogateServiceStub(grpc.insecure_channel(address)).Generate
    _, messages = _chat_messages()
    adapter = st.one_of(
        st.none(),
        st.builds(
            lambda sid, g: surrogate_pb2.AdapterRef(session_id=sid, generation=g),
            st.one_of(ids, st.sampled_from([s.session_id for s in sessions])),
            st.one_of(st.sampled_from([0, 1, 2]), st.integers(0, 2**32 - 1)),
        ),
    )

    # in range, but so close to 0 (float32 subnormals) that logits / temperature overflow
    tiny_temperature = st.builds(
        lambda n, t, p: common_pb2.GenerationParams(max_new_tokens=n, temperature=t, top_p=p),
        st.integers(0, 16),
        st.sampled_from([1.401298464324817e-45, 1e-40, 1.1754943508222875e-38, 1e-30, 1e-10]),
        st.sampled_from([0.0, 1e-40, 0.5, 1.0]),
    )

    @hypothesis_seed(seed + 40)
    @every
    @given(msgs=messages, p=st.one_of(params, _sane_params(), tiny_temperature), request_id=text, ref=adapter)
    def surrogate_generate(msgs, p, request_id, ref):
        req = surrogate_pb2.SurrogateServiceGenerateRequest(messages=msgs, params=p, request_id=request_id, adapter=ref)
        recorder.call(
            "SurrogateGenerate", lambda: list(generate(req, metadata=token, timeout=60)), lambda: _describe(req)
        )

    plain = surrogate_pb2.SurrogateServiceGenerateRequest(
        messages=[common_pb2.Message(role=common_pb2.ROLE_USER, content="Say yes.")],
        params=common_pb2.GenerationParams(max_new_tokens=2),
    )
    recorder.call("SurrogateGenerate", lambda: list(generate(plain, metadata=token, timeout=60)), str)
    methods = {"Generate": lambda md: list(generate(plain, metadata=md, timeout=30))}
    return [
        surrogate_generate,
        token_refusals(recorder, "SurrogateServiceToken", methods, service_token, examples, seed + 41),
    ]


def fuzz_internal(
    addresses: dict[str, str],
    service_token: str,
    sessions: list[JobSession],
    session_db: Path,
    results_dir: Path,
    examples: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Run `examples` cases per RPC of the mining, training, gate and surrogate services (each at
    addresses[target]); returns the status counts, the violations and what the job check found."""
    recorder = Recorder(tuple(r for r in INTERNAL_RPCS + TOKEN_CHECKS if not r.startswith("Teacher")))
    before = _store_snapshot(session_db, sessions)
    job_runs, job_check = fuzz_jobs(
        recorder, addresses["mining"], addresses["training"], service_token, sessions, results_dir, examples, seed
    )
    started = time.perf_counter()
    runs = [
        *job_runs,
        *fuzz_gate(recorder, addresses["gate"], service_token, examples, seed),
        *fuzz_surrogate(recorder, addresses["surrogate"], service_token, sessions, examples, seed),
    ]
    for run in runs:
        run()
    jobs = job_check()
    if _store_snapshot(session_db, sessions) != before:
        recorder.violations.append("the job services changed a stored session (they may only read the store)")
    return {
        "seconds": time.perf_counter() - started,
        "codes": {rpc: dict(c) for rpc, c in recorder.codes.items()},
        "call_seconds": dict(recorder.seconds),
        "violations": recorder.violations,
        "jobs": jobs,
    }


def _stop_teacher(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _start_servers(wanted: dict[str, dict[str, str]], folder: Path, stack: ExitStack) -> dict[str, Any]:
    """Start a `soma serve --target T` per entry (env of each), side by side; each is stopped when
    `stack` closes, also when another failed to start."""
    from soma.launcher import start_server

    with ThreadPoolExecutor(len(wanted)) as pool:
        futures = {
            target: pool.submit(start_server, target, env=env, log_path=folder / f"{target}.log")
            for target, env in wanted.items()
        }
        servers, errors = {}, []
        for target, future in futures.items():
            try:
                servers[target] = stack.enter_context(future.result())
            except Exception as err:  # noqa: BLE001 - reported below, after the others are in the stack
                errors.append(f"{target}: {err}")
    if errors:
        raise RuntimeError("servers did not start: " + "; ".join(errors))
    return servers


def run_fuzz_stack(examples: int, seed: int, folder: Path) -> tuple[dict[str, Any], bool]:
    """The stand-in teacher, `soma serve --target dialogue` and one `soma serve` per internal
    service (mining, training, gate, surrogate), all with a service token; returns (report, every
    server survived). Every process is stopped at the end, also on failure."""
    import secrets

    from soma.models.testing import build_tiny_chat_model

    token_file = folder / "service-token"
    token_file.write_text(secrets.token_urlsafe(32))  # the cluster layout: soma's calls carry it
    service_token = token_file.read_text().strip()
    session_db = folder / "job-sessions.db"  # the store the job services admit submissions against
    sessions = put_job_sessions(session_db)
    model = build_tiny_chat_model(folder / "tiny-surrogate")
    (folder / "adapters").mkdir()
    cluster = {"SOMA_SERVER__SERVICE_TOKEN_FILE": str(token_file)}
    jobs_env = {"SOMA_JOBS__LOCAL_DIR": str(folder / "jobs"), "SOMA_DIALOGUE__SESSION_DB": str(session_db)}
    from soma.bench.instant_teacher import start as start_instant_teacher

    with ExitStack() as stack:
        teacher, teacher_address = start_instant_teacher(folder / "teacher.log", token_file)
        stack.callback(_stop_teacher, teacher)
        wanted = {
            "dialogue": {
                "SOMA_DIALOGUE__TEACHER_ADDRESS": teacher_address,
                "SOMA_ADAPTATION__MODE": "off",
                "SOMA_DIALOGUE__MAX_CONCURRENT_TURNS": "4",
                # the per-tenant rate quotas refuse a fast caller before they read its request: off,
                # so the generated requests reach the argument checks (soma bench load covers quotas)
                "SOMA_QUOTAS__OPEN_RATE_PER_TENANT": "0",
                "SOMA_QUOTAS__CHAT_RATE_PER_TENANT": "0",
            },
            "mining": jobs_env,
            "training": jobs_env,
            "gate": {},
            "surrogate": {
                "SOMA_SURROGATE__MODEL": str(model),
                "SOMA_ADAPTERS__LOCAL_DIR": str(folder / "adapters"),
                "SOMA_SURROGATE__DEFAULT_MAX_NEW_TOKENS": "8",
                "SOMA_SURROGATE__MAX_NEW_TOKENS_LIMIT": "16",
            },
        }
        wanted = {
            target: {**cluster, "SOMA_STATE_DIR": str(folder / f"state-{target}"), **env}
            for target, env in wanted.items()
        }
        servers = _start_servers(wanted, folder, stack)
        dialogue = servers["dialogue"]
        public = fuzz(dialogue.address, dialogue.api_key, examples, seed, teacher_address, service_token)
        internal = fuzz_internal(
            {t: s.address for t, s in servers.items()},
            service_token,
            sessions,
            session_db,
            folder / "jobs" / "results",
            examples,
            seed,
        )
        alive = {target: server.proc.poll() is None for target, server in servers.items()}
        alive["teacher"] = teacher.poll() is None
    codes = {**public["codes"], **internal["codes"]}
    seconds = {**public["call_seconds"], **internal["call_seconds"]}
    report = {
        "examples_per_rpc": examples,
        "seed": seed,
        "seconds": public["seconds"] + internal["seconds"],
        "codes": {rpc: codes.get(rpc, {}) for rpc in RPCS},
        "call_seconds": {rpc: round(seconds.get(rpc, 0.0), 1) for rpc in RPCS},
        "kept_session_turns": public["kept_session_turns"],
        "jobs": internal["jobs"],
        "servers_alive": alive,
        "violations": public["violations"] + internal["violations"],
    }
    return report, all(alive.values())


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--examples", type=int, default=2000, help="cases per RPC")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("bench-out/fuzz"))


def run(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="soma-fuzz-") as tmp:
        report, alive = run_fuzz_stack(args.examples, args.seed, Path(tmp))
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    jobs = report["jobs"]
    lines = [
        f"# soma bench fuzz ({args.examples} cases per RPC, seed {args.seed}, {report['seconds']:.0f} s)",
        "",
        "| RPC | status counts | seconds |",
        "|---|---|---|",
        *(
            f"| {rpc} | {', '.join(f'{k} {v}' for k, v in sorted(c.items()))} | {report['call_seconds'][rpc]:.0f} |"
            for rpc, c in report["codes"].items()
        ),
        "",
        f"Jobs admitted (Submit OK): {', '.join(jobs['jobs_submitted_ok']) or 'none'}; forgotten with the "
        f"session's token: {', '.join(jobs['forgotten_with_token']) or 'none'}; left in the queue: "
        f"{', '.join(jobs['jobs_in_queue']) or 'none'} (expected: {', '.join(jobs['jobs_expected']) or 'none'}).",
        "",
        f"Violations: {len(report['violations'])}; servers alive at the end: {alive} "
        f"({', '.join(f'{t} {ok}' for t, ok in report['servers_alive'].items())}).",
        *(f"- {v}" for v in report["violations"][:50]),
    ]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if alive and not report["violations"] else 1
