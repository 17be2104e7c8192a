"""The SQLite session store: atomic turns, tombstones, no lost or interleaved turns."""

import sqlite3
import threading
import time

import pytest

from soma.session.records import Phase, ServedBy, SessionState, Turn, chat_messages, is_valid_session_id
from soma.storage.session_store import (
    SessionClosed,
    SessionExists,
    SessionMissing,
    SqliteSessionStore,
    TurnConflict,
)


def _turn(index: int, answer: str = "a") -> Turn:
    return Turn(index, f"q{index}", answer, ServedBy.TEACHER, "test", Phase.WARMUP, 10, 5, 12.0, 10.0, "stop")


@pytest.fixture
def store(tmp_path):
    return SqliteSessionStore(tmp_path / "s.db")


def _open(store, sid="s1", system=""):
    now = time.time()
    state = SessionState(sid, now, now, system_prompt=system, labels={"tenant": "t"})
    store.create(state)
    return state


def test_create_get_and_duplicate(store):
    _open(store)
    got = store.get("s1")
    assert got.labels == {"tenant": "t"} and got.phase is Phase.WARMUP and got.turn_count == 0
    with pytest.raises(SessionExists):
        _open(store)
    assert store.get("nope") is None


def test_append_updates_counters_and_order(store):
    _open(store)
    for i in (1, 2, 3):
        state = store.append_turn("s1", _turn(i, f"answer {i}"), Phase.WARMUP)
    assert state.turn_count == 3 and state.teacher_turns == 3 and state.surrogate_turns == 0
    assert [t.answer for t in store.turns("s1")] == ["answer 1", "answer 2", "answer 3"]
    assert store.get("s1").turn_count == 3


def test_stale_turn_index_is_refused_and_changes_nothing(store):
    _open(store)
    store.append_turn("s1", _turn(1), Phase.WARMUP)
    with pytest.raises(TurnConflict):
        store.append_turn("s1", _turn(1, "duplicate"), Phase.WARMUP)
    with pytest.raises(TurnConflict):
        store.append_turn("s1", _turn(3), Phase.WARMUP)
    assert [t.answer for t in store.turns("s1")] == ["a"]
    assert store.get("s1").turn_count == 1


def test_racing_writers_store_exactly_one_turn(tmp_path):
    path = tmp_path / "race.db"
    SqliteSessionStore(path)
    _open(SqliteSessionStore(path))
    outcomes = []

    def writer(k):
        try:
            SqliteSessionStore(path).append_turn("s1", _turn(1, f"w{k}"), Phase.WARMUP)
            outcomes.append("ok")
        except TurnConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 1 and outcomes.count("conflict") == 7
    assert len(SqliteSessionStore(path).turns("s1")) == 1


def test_close_deletes_transcript_keeps_tombstone(store, tmp_path):
    _open(store)
    store.append_turn("s1", _turn(1), Phase.WARMUP)
    state = store.close("s1")
    assert state.phase is Phase.CLOSED
    assert store.turns("s1") == []
    rows = sqlite3.connect(tmp_path / "s.db").execute("SELECT count(*) FROM turns WHERE session_id='s1'").fetchone()
    assert rows == (0,)
    with pytest.raises(SessionClosed):
        store.close("s1")
    with pytest.raises(SessionClosed):
        store.append_turn("s1", _turn(2), Phase.WARMUP)
    with pytest.raises(SessionMissing):
        store.close("other")


def test_full_history_messages():
    state = SessionState("s", 0, 0, system_prompt="be brief")
    history = [_turn(1, "one"), _turn(2, "two")]
    messages = chat_messages(state, history, "three?")
    assert messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "one"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "three?"},
    ]


@pytest.mark.parametrize(
    "sid,ok",
    [
        ("abc", True),
        ("a.b_c-1", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("", False),
        ("../etc", False),
        ("a/b", False),
        (".hidden", False),
        ("a b", False),
        ("a\\b", False),
    ],
)
def test_session_ids_are_path_safe(sid, ok):
    assert is_valid_session_id(sid) is ok
