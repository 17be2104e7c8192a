"""`soma bench fuzz`: hypothesis-generated requests against every public RPC of a real server.

The Dialogue API (OpenSession, Chat, GetSession, CloseSession), Health and Reflection get requests
with empty and extreme lengths, control characters, huge maps, out-of-range numbers, NaN and
infinities, and credentials that are missing, malformed or wrong. What must hold: no INTERNAL or
UNKNOWN status, the server process stays up, and every stored transcript changed only through Chat
calls that returned OK. The server under test is `soma serve --target dialogue` (adaptation off)
in front of a stand-in teacher (`soma.bench.instant_teacher`), so thousands of cases fit in minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc

BAD_CODES = ("INTERNAL", "UNKNOWN", "DATA_LOSS")
RPCS = (
    "OpenSession",
    "Chat",
    "GetSession",
    "CloseSession",
    "Credentials",
    "Health",
    "Reflection",
    "TeacherGenerate",
    "ServiceToken",
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


def fuzz(
    address: str, api_key: str, examples: int, seed: int = 0, teacher: str = "", service_token: str = ""
) -> dict[str, Any]:
    """Run `examples` cases per RPC; returns the status counts and every violation found. With
    `teacher` and `service_token`, the internal TeacherService is fuzzed too, with the valid token
    and without it."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed

    from soma.client import open_channel
    from soma.v1 import common_pb2, dialogue_pb2, dialogue_pb2_grpc

    st, text, ids, params, labels = _strategies()
    channel = open_channel(address, api_key)
    stub = dialogue_pb2_grpc.DialogueServiceStub(channel)
    raw = grpc.insecure_channel(address)
    codes: dict[str, Counter] = {rpc: Counter() for rpc in RPCS}
    violations: list[str] = []
    kept = [stub.OpenSession(dialogue_pb2.OpenSessionRequest(session_id=f"fuzz-kept-{i}")).session.session_id
            for i in range(3)]  # fmt: skip
    ok_turns = Counter()

    def call(rpc: str, fn, describe) -> bool:
        try:
            fn()
        except grpc.RpcError as err:
            name = err.code().name if err.code() else "UNKNOWN"
            codes[rpc][name] += 1
            if name in BAD_CODES:
                violations.append(f"{rpc} -> {name} ({err.details()!r}) on {describe()[:300]}")
            return False
        except ValueError as err:  # the client refused to encode it (e.g. a value out of the field's range)
            codes[rpc]["CLIENT_REFUSED"] += 1
            del err
            return False
        codes[rpc]["OK"] += 1
        return True

    every = settings(
        max_examples=examples, database=None, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False
    )
    session_ids = st.one_of(st.sampled_from(kept), ids)

    @hypothesis_seed(seed)
    @every
    @given(sid=ids, system=text, lab=labels)
    def open_session(sid, system, lab):
        req = dialogue_pb2.OpenSessionRequest(session_id=sid, system_prompt=system, labels=lab)
        call("OpenSession", lambda: stub.OpenSession(req, timeout=30), lambda: str(req))

    sane_params = st.builds(
        lambda n, t, p: common_pb2.GenerationParams(max_new_tokens=n, temperature=t, top_p=p),
        st.integers(0, 16),
        st.floats(0, 2, width=32),
        st.floats(0, 1, width=32),
    )
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
        if call("Chat", lambda: list(stub.Chat(req, timeout=60)), lambda: str(req)) and sid in kept:
            ok_turns[sid] += 1

    @hypothesis_seed(seed + 2)
    @every
    @given(sid=session_ids, transcript=st.booleans())
    def get_session(sid, transcript):
        req = dialogue_pb2.GetSessionRequest(session_id=sid, include_transcript=transcript)
        call("GetSession", lambda: stub.GetSession(req, timeout=30), lambda: str(req))

    @hypothesis_seed(seed + 3)
    @every
    @given(sid=ids)
    def close_session(sid):
        if sid in kept:
            return  # the kept sessions carry the transcript invariant
        req = dialogue_pb2.CloseSessionRequest(session_id=sid)
        call("CloseSession", lambda: stub.CloseSession(req, timeout=30), lambda: str(req))

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
        call("Health", lambda: health.Check(req, timeout=30), lambda: str(req))

    reflection = reflection_pb2_grpc.ServerReflectionStub(raw)

    @hypothesis_seed(seed + 6)
    @every
    @given(kind=st.sampled_from(["file_by_filename", "file_containing_symbol", "list_services"]), arg=text)
    def reflect(kind, arg):
        req = reflection_pb2.ServerReflectionRequest(**{kind: arg})
        call("Reflection", lambda: list(reflection.ServerReflectionInfo(iter([req]), timeout=30)), lambda: str(req))

    runs = [open_session, chat, get_session, close_session, credentials, health_check, reflect]
    if teacher:
        from soma.telemetry.tracing import SERVICE_TOKEN_HEADER
        from soma.v1 import common_pb2, teacher_pb2, teacher_pb2_grpc

        teacher_channel = grpc.insecure_channel(teacher)
        generate = teacher_pb2_grpc.TeacherServiceStub(teacher_channel).Generate
        token = [(SERVICE_TOKEN_HEADER, service_token)]
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
        messages = st.one_of(
            st.lists(any_message, max_size=40),
            st.builds(lambda head, last: [*head, last], st.lists(known_message, max_size=8), last_user),
        )

        @hypothesis_seed(seed + 7)
        @every
        @given(msgs=messages, p=st.one_of(params, sane_params), request_id=text)
        def teacher_generate(msgs, p, request_id):
            req = teacher_pb2.TeacherServiceGenerateRequest(messages=msgs, params=p, request_id=request_id)
            call("TeacherGenerate", lambda: list(generate(req, metadata=token, timeout=30)), lambda: str(req)[:300])

        @hypothesis_seed(seed + 8)
        @every
        @given(sent=st.one_of(st.just(""), st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", max_size=64)))
        def service_token_check(sent):
            req = teacher_pb2.TeacherServiceGenerateRequest(
                messages=[common_pb2.Message(role=common_pb2.ROLE_USER, content="hi")]
            )
            metadata = [(SERVICE_TOKEN_HEADER, sent)] if sent else []
            if call("ServiceToken", lambda: list(generate(req, metadata=metadata, timeout=30)), lambda: sent):
                violations.append(f"TeacherService answered OK to the service token {sent!r}")

        plain_generate = teacher_pb2.TeacherServiceGenerateRequest(
            messages=[common_pb2.Message(role=common_pb2.ROLE_USER, content="Say yes.")]
        )
        call("TeacherGenerate", lambda: list(generate(plain_generate, metadata=token, timeout=30)), str)
        runs += [teacher_generate, service_token_check]
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
    return {
        "examples_per_rpc": examples,
        "seed": seed,
        "seconds": time.perf_counter() - started,
        "codes": {rpc: dict(c) for rpc, c in codes.items()},
        "kept_session_turns": dict(ok_turns),
        "violations": violations,
    }


def start_instant_teacher(log_path: Path, token_file: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "SOMA_SERVE_PARENT_PID": str(os.getpid())}
    log = open(log_path, "w")  # noqa: SIM115 - the child keeps writing to it
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "soma.bench.instant_teacher",
            "--port",
            "0",
            "--service-token-file",
            str(token_file),
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
    )
    line = proc.stdout.readline()
    if not line.startswith("instant teacher on "):
        proc.kill()
        raise RuntimeError(f"the stand-in teacher did not start; see {log_path}")
    return proc, line.split()[-1]


def run_fuzz_stack(examples: int, seed: int, folder: Path) -> tuple[dict[str, Any], bool]:
    """The stand-in teacher and a real `soma serve --target dialogue`; returns (report, server survived)."""
    import secrets

    from soma.launcher import start_server

    token_file = folder / "service-token"
    token_file.write_text(secrets.token_urlsafe(32))  # the cluster layout: soma's calls carry it
    teacher, address = start_instant_teacher(folder / "teacher.log", token_file)
    try:
        env = {
            "SOMA_SERVER__SERVICE_TOKEN_FILE": str(token_file),
            "SOMA_DIALOGUE__TEACHER_ADDRESS": address,
            "SOMA_ADAPTATION__MODE": "off",
            "SOMA_STATE_DIR": str(folder / "state"),
            "SOMA_DIALOGUE__MAX_CONCURRENT_TURNS": "4",
        }
        with start_server("dialogue", env=env, log_path=folder / "dialogue.log") as server:
            report = fuzz(server.address, server.api_key, examples, seed, address, token_file.read_text().strip())
            alive = server.proc.poll() is None
            report["dialogue_server_alive"] = alive
            report["teacher_alive"] = teacher.poll() is None
        return report, alive and report["teacher_alive"]
    finally:
        teacher.terminate()
        teacher.wait(30)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--examples", type=int, default=2000, help="cases per RPC")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("bench-out/fuzz"))


def run(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="soma-fuzz-") as tmp:
        report, alive = run_fuzz_stack(args.examples, args.seed, Path(tmp))
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# soma bench fuzz ({args.examples} cases per RPC, seed {args.seed}, {report['seconds']:.0f} s)",
        "",
        "| RPC | status counts |",
        "|---|---|",
        *(f"| {rpc} | {', '.join(f'{k} {v}' for k, v in sorted(c.items()))} |" for rpc, c in report["codes"].items()),
        "",
        f"Violations: {len(report['violations'])}; servers alive at the end: {alive}.",
        *(f"- {v}" for v in report["violations"][:50]),
    ]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if alive and not report["violations"] else 1
