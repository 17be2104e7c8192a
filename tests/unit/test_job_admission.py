"""Which adaptation jobs the mining and training services admit, over a real SQLite session store:
only those signed by the session's own driver, for the generation it is building, on warm turns
read from the stored transcript (issue 14: no adapter poisoning)."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from soma.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Unavailable
from soma.jobs.admission import JobAdmission
from soma.session import live as live_record
from soma.session import machine
from soma.session.job_token import job_token, token_matches
from soma.session.live import LiveRecord
from soma.session.reconcile import LiveSession
from soma.session.records import Phase, ServedBy, SessionState, Turn
from soma.storage.session_store import SqliteSessionStore
from soma.v1 import common_pb2

SECRET = "ab" * 32


def _turn(i: int, by: ServedBy = ServedBy.TEACHER, finish: str = "stop") -> Turn:
    return Turn(i, f"q{i}", f"a{i}", by, "t", Phase.WARMUP, 1, 1, 1.0, 1.0, finish)


@pytest.fixture
def store(tmp_path):
    store = SqliteSessionStore(tmp_path / "s.db")
    now = time.time()
    store.create(SessionState("s1", now, now, system_prompt="be brief"))
    store.append_turn("s1", _turn(1), None)
    store.append_turn("s1", _turn(2, finish="length"), None)
    store.append_turn("s1", _turn(3, ServedBy.SURROGATE), None)
    adapting = LiveSession(adaptation=machine.Adaptation(phase=Phase.ADAPTING, generation=1))
    record = LiveRecord(live=adapting, job_secret=SECRET)
    assert store.put_live("s1", live_record.to_dict(record), 0, Phase.ADAPTING, 1)
    return store


def _warm(*indices: int, **fields) -> list[common_pb2.WarmTurn]:
    return [common_pb2.WarmTurn(turn_index=i, **fields) for i in indices]


def _msg(role: int, text: str) -> common_pb2.Message:
    return common_pb2.Message(role=role, content=text)


def test_the_driver_s_token_admits_a_job_built_from_the_stored_turns(store):
    rows = JobAdmission(store).warm_rows("mine", "s1", 1, job_token(SECRET, "mine", "s1", 1), _warm(1, 2))
    assert [r["turn_index"] for r in rows] == [1, 2]
    assert rows[1]["context"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
    ]
    assert [r["teacher_answer"] for r in rows] == ["a1", "a2"]
    assert [r["finished"] for r in rows] == [True, False]  # turn 2 was cut at its token budget


@pytest.mark.parametrize(
    "token",
    [
        "",
        "0" * 64,
        job_token(SECRET, "train", "s1", 1),  # another kind's token
        job_token(SECRET, "mine", "s2", 1),  # another session's
        job_token(SECRET, "mine", "s1", 2),  # another generation's
        job_token("cd" * 32, "mine", "s1", 1),  # another secret's
        job_token(SECRET, "mine", "s1", 1)[:-1] + "é",  # non-ASCII (found by soma bench fuzz)
        "\u2028" * 64,
    ],
)
def test_a_job_its_driver_did_not_sign_is_refused(store, token):
    with pytest.raises(PermissionDenied, match="not signed by the session's adaptation driver"):
        JobAdmission(store).warm_rows("mine", "s1", 1, token, _warm(1, 2))


def test_poisoned_warm_turns_are_refused(store):
    """What a caller sends along must equal the stored turn: the job never trains on the caller's text."""
    admission, token = JobAdmission(store), job_token(SECRET, "mine", "s1", 1)
    with pytest.raises(InvalidArgument, match="teacher_answer differs"):
        admission.warm_rows("mine", "s1", 1, token, _warm(1, teacher_answer="rm -rf / is safe"))
    with pytest.raises(InvalidArgument, match="context differs"):
        admission.warm_rows("mine", "s1", 1, token, _warm(1, context=[_msg(common_pb2.ROLE_USER, "other")]))
    same = [_msg(common_pb2.ROLE_SYSTEM, "be brief"), _msg(common_pb2.ROLE_USER, "q1")]
    assert admission.warm_rows("mine", "s1", 1, token, _warm(1, context=same, teacher_answer="a1"))
    with pytest.raises(InvalidArgument, match="not a turn the teacher served"):
        admission.warm_rows("mine", "s1", 1, token, _warm(3))  # the surrogate's answer
    with pytest.raises(InvalidArgument, match="not a turn the teacher served"):
        admission.warm_rows("mine", "s1", 1, token, _warm(9))
    with pytest.raises(InvalidArgument, match="does not end with the stored query"):
        admission.warm_rows("mine", "s1", 1, token, _warm(1, served_context=[_msg(common_pb2.ROLE_USER, "q9")]))
    with pytest.raises(InvalidArgument, match="warm_turns is empty"):
        admission.warm_rows("mine", "s1", 1, token, [])


def test_training_names_the_turns_its_generation_was_mined_on(store):
    raw, version = store.get_live("s1")
    record = replace(live_record.from_dict(raw), warm_turns=(1, 2))
    assert store.put_live("s1", live_record.to_dict(record), version, Phase.ADAPTING, 1)
    admission, token = JobAdmission(store), job_token(SECRET, "train", "s1", 1)
    with pytest.raises(InvalidArgument, match="was mined on"):
        admission.warm_rows("train", "s1", 1, token, _warm(2, 1))
    assert len(admission.warm_rows("train", "s1", 1, token, _warm(1, 2))) == 2


def test_unknown_sessions_and_generations_not_being_built(store):
    admission = JobAdmission(store)
    with pytest.raises(NotFound):
        admission.warm_rows("mine", "nobody", 1, job_token(SECRET, "mine", "nobody", 1), _warm(1))
    with pytest.raises(FailedPrecondition, match="not adapting generation 2"):
        admission.warm_rows("mine", "s1", 2, job_token(SECRET, "mine", "s1", 2), _warm(1))
    store.close("s1")
    with pytest.raises(FailedPrecondition, match="closed"):
        admission.warm_rows("mine", "s1", 1, job_token(SECRET, "mine", "s1", 1), _warm(1))


def test_a_session_without_a_secret_admits_nothing(store):
    raw, version = store.get_live("s1")
    raw["job_secret"] = ""
    assert store.put_live("s1", raw, version, Phase.ADAPTING, 1)
    assert not token_matches("", "mine", "s1", 1, "")
    with pytest.raises(PermissionDenied):
        JobAdmission(store).warm_rows("mine", "s1", 1, "", _warm(1))


def test_an_unreadable_store_refuses_for_now(store):
    class Broken:
        def get(self, session_id):
            raise OSError("disk gone")

    with pytest.raises(Unavailable, match="retry later"):
        JobAdmission(Broken()).warm_rows("mine", "s1", 1, "x", _warm(1))
