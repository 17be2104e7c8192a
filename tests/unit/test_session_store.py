"""The session stores (SQLite, and Redis on a real redis-server): atomic turns, tombstones, no lost
or interleaved turns."""

import sqlite3
import threading
import time

import pytest

from soma.ids import is_valid_session_id
from soma.session.records import Phase, ServedBy, SessionState, Turn, chat_messages
from soma.storage.session_store import (
    SessionClosed,
    SessionExists,
    SessionMissing,
    SqliteSessionStore,
    TurnConflict,
)


def _turn(index: int, answer: str = "a") -> Turn:
    return Turn(index, f"q{index}", answer, ServedBy.TEACHER, "test", Phase.WARMUP, 10, 5, 12.0, 10.0, "stop")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    from tests.servers import redis_server

    with redis_server(tmp_path_factory.mktemp("redis")) as (url, _):
        yield url


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        return SqliteSessionStore(tmp_path / "s.db")
    from soma.storage.redis_session_store import RedisSessionStore

    url = request.getfixturevalue("redis_url")
    return RedisSessionStore(url, prefix=f"t{time.monotonic_ns()}:")  # a fresh namespace per test


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
    if isinstance(store, SqliteSessionStore):
        rows = sqlite3.connect(tmp_path / "s.db").execute("SELECT count(*) FROM turns WHERE session_id='s1'")
        assert rows.fetchone() == (0,)
    else:
        assert not store.redis.exists(f"{store.prefix}turns:s1")  # the transcript is really gone
    with pytest.raises(SessionClosed):
        store.close("s1")
    with pytest.raises(SessionClosed):
        store.append_turn("s1", _turn(2), Phase.WARMUP)
    with pytest.raises(SessionMissing):
        store.close("other")


def test_racing_redis_writers_store_exactly_one_turn(redis_url):
    from soma.storage.redis_session_store import RedisSessionStore

    prefix = f"race{time.monotonic_ns()}:"
    _open(RedisSessionStore(redis_url, prefix=prefix))
    outcomes = []

    def writer(k):
        try:
            RedisSessionStore(redis_url, prefix=prefix).append_turn("s1", _turn(1, f"w{k}"), Phase.WARMUP)
            outcomes.append("ok")
        except TurnConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 1 and outcomes.count("conflict") == 7
    assert len(RedisSessionStore(redis_url, prefix=prefix).turns("s1")) == 1


def test_redis_restart_between_turns_keeps_the_session(tmp_path):
    from soma.storage.redis_session_store import RedisSessionStore
    from tests.servers import free_port, redis_server

    port = free_port()
    with redis_server(tmp_path / "r", port) as (url, _):
        store = RedisSessionStore(url)
        _open(store)
        store.append_turn("s1", _turn(1, "before"), Phase.WARMUP)
    with redis_server(tmp_path / "r", port) as (url, _):  # the same data directory and port
        state = store.append_turn("s1", _turn(2, "after"), Phase.WARMUP)  # the same client reconnects
        assert state.turn_count == 2
        assert [t.answer for t in store.turns("s1")] == ["before", "after"]


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


# -- the live-adaptation record ------------------------------------------------------------


def test_live_record_is_compare_and_set(store):
    _open(store)
    assert store.get_live("s1") == (None, 0)
    assert store.put_live("s1", {"v": 1}, 0, Phase.ADAPTING, 1)
    assert store.get_live("s1") == ({"v": 1}, 1)
    # a writer that read version 0 lost the race: refused, nothing changed
    assert not store.put_live("s1", {"v": "stale"}, 0, Phase.WARMUP, 0)
    assert store.get_live("s1") == ({"v": 1}, 1)
    state = store.get("s1")
    assert (state.phase, state.adapter_generation) == (Phase.ADAPTING, 1)  # what clients see moves with it
    assert store.sessions_in([Phase.ADAPTING, Phase.GATING]) == ["s1"]
    assert store.put_live("s1", {"v": 2}, 1, Phase.SURROGATE, 1)
    assert store.sessions_in([Phase.ADAPTING, Phase.GATING]) == []
    with pytest.raises(SessionMissing):
        store.put_live("nope", {}, 0, Phase.WARMUP, 0)


def test_turns_keep_the_phase_the_live_record_set(store):
    _open(store)
    store.put_live("s1", {"v": 1}, 0, Phase.SURROGATE, 1)
    store.append_turn("s1", _turn(1), None)
    assert store.get("s1").phase is Phase.SURROGATE and store.get("s1").turn_count == 1


def test_a_stored_turn_takes_the_phase_it_left_the_session_in(store):
    _open(store)
    for i in (1, 2):
        store.append_turn("s1", _turn(i, f"answer {i}"), None)
    store.set_turn_phase("s1", 2, Phase.ADAPTING)
    turns = store.turns("s1")
    assert [t.phase for t in turns] == [Phase.WARMUP, Phase.ADAPTING]
    assert [t.answer for t in turns] == ["answer 1", "answer 2"]  # the rest of the turn is untouched
    store.close("s1")
    with pytest.raises(SessionMissing):  # the transcript went with close
        store.set_turn_phase("s1", 2, Phase.SURROGATE)


def test_closed_sessions_take_no_live_writes_and_leave_the_active_set(store):
    _open(store)
    store.put_live("s1", {"v": 1}, 0, Phase.ADAPTING, 1)
    store.close("s1")
    assert store.sessions_in([Phase.ADAPTING]) == []
    with pytest.raises(SessionClosed):
        store.put_live("s1", {"v": 2}, 1, Phase.GATING, 1)


def test_delete_removes_the_session_and_its_transcript(store):
    _open(store)
    store.append_turn("s1", _turn(1), Phase.WARMUP)
    store.put_live("s1", {"v": 1}, 0, Phase.ADAPTING, 1)
    assert store.delete("s1")
    assert store.get("s1") is None and store.turns("s1") == []
    assert store.sessions_in([Phase.ADAPTING]) == []
    assert not store.delete("s1")


def test_an_older_sqlite_file_gets_the_live_columns(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the schema before live adaptation
        conn.executescript(
            "CREATE TABLE sessions (session_id TEXT PRIMARY KEY, created_at REAL NOT NULL, updated_at REAL NOT NULL,"
            " phase TEXT NOT NULL, system_prompt TEXT NOT NULL, labels TEXT NOT NULL, turn_count INTEGER NOT NULL,"
            " teacher_turns INTEGER NOT NULL, surrogate_turns INTEGER NOT NULL, adapter_generation INTEGER NOT NULL);"
            "INSERT INTO sessions VALUES ('old', 1, 1, 'WARMUP', '', '{}', 0, 0, 0, 0);"
        )
    store = SqliteSessionStore(path)
    assert store.get("old").phase is Phase.WARMUP
    assert store.get_live("old") == (None, 0)
    assert store.put_live("old", {"v": 1}, 0, Phase.ADAPTING, 1)


def test_a_job_worker_reads_what_the_store_says_of_its_session(store):
    """The worker's check before a job runs (soma.jobs.tasks.check_session) against both stores:
    SQLite in embedded mode, Redis in a cluster."""
    from soma.jobs.tasks import check_session
    from tests.sessions import adapting_session

    adapting_session(store, "busy", generation=2)
    assert check_session(store, "busy", 2) is None
    assert check_session(store, "busy", 1).reason == "superseded"
    assert check_session(store, "nobody", 1).reason == "unknown"
    store.close("busy")
    assert check_session(store, "busy", 2).reason == "closed"


def test_a_job_worker_that_cannot_read_the_store_runs_the_job():
    from soma.jobs.tasks import check_session
    from soma.storage.redis_session_store import RedisSessionStore
    from tests.servers import free_port

    down = RedisSessionStore(f"redis://127.0.0.1:{free_port()}/0")
    assert check_session(down, "any", 1) is None  # dropping is a saving; a lost job is not

    def cannot_open():
        raise ConnectionError("no session store")

    assert check_session(cannot_open, "any", 1) is None


def test_open_sessions_are_counted_per_tenant(store):
    """What quotas.sessions_per_tenant reads, in both stores: open sessions by their tenant label."""
    now = time.time()
    for sid, tenant in (("a1", "acme"), ("a2", "acme"), ("b1", "beta"), ("n1", None)):
        labels = {"tenant": tenant} if tenant else {}
        store.create(SessionState(sid, now, now, labels=labels))
    assert (store.open_sessions_of("acme"), store.open_sessions_of("beta"), store.open_sessions_of(None)) == (2, 1, 1)
    store.close("a1")
    assert store.open_sessions_of("acme") == 1
    store.delete("a2")
    store.delete("a1")  # a closed one deleted later: still not counted
    assert store.open_sessions_of("acme") == 0 and store.open_sessions_of("nobody") == 0


def test_idle_sessions_are_erased_after_their_ttl(store):
    """The idle TTL outside the operator (soma.dialogue.expiry), over both stores: a session idle past
    dialogue.session_ttl_s is erased with what lives outside the store; a used one stays."""
    from soma.dialogue.expiry import IdleExpiry

    store.create(SessionState("old", 1000.0, 1000.0))
    store.create(SessionState("fresh", 1000.0, 5000.0))
    assert store.idle_sessions(2000.0) == ["old"]
    forgotten = []
    expiry = IdleExpiry(store, ttl_s=3600, forget=forgotten.append, clock=lambda: 1000.0 + 3601)
    assert expiry.sweep() == ["old"] and forgotten == ["old"]
    assert store.get("old") is None and store.get("fresh") is not None
    assert expiry.sweep() == []


def test_a_tenant_s_session_limit_is_checked_in_the_create_itself(store):
    """quotas.sessions_per_tenant without overshoot: the count and the insert are one transaction
    (SQLite) or one script (Redis), so racing OpenSessions cannot pass the limit together."""
    from concurrent.futures import ThreadPoolExecutor

    from soma.storage.session_store import TenantFull

    now = time.time()

    def create(i):
        try:
            store.create(SessionState(f"race-{i}", now, now, labels={"tenant": "acme"}), max_open_of_tenant=3)
            return "ok"
        except TenantFull as full:
            assert full.open_sessions == 3
            return "full"

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(create, range(20)))
    assert results.count("ok") == 3 and store.open_sessions_of("acme") == 3
    store.create(SessionState("other", now, now, labels={"tenant": "beta"}), max_open_of_tenant=3)


def test_sessions_are_counted_by_phase_and_exported_as_a_gauge(store):
    """soma_sessions{phase} in every mode: the store's own count, read when Prometheus scrapes."""
    from prometheus_client import CollectorRegistry, generate_latest

    from soma.telemetry.metrics import SessionsByPhase

    for sid in ("a", "b", "c"):
        _open(store, sid)
    store.put_live("c", {"x": 1}, 0, Phase.ADAPTING, 0)
    assert store.count_by_phase() == {Phase.WARMUP: 2, Phase.ADAPTING: 1}
    store.delete("a")
    clock = [0.0]
    registry = CollectorRegistry()
    collector = SessionsByPhase(store, max_age_s=10, clock=lambda: clock[0])
    registry.register(collector)
    text = generate_latest(registry).decode()
    assert 'soma_sessions{phase="WARMUP"} 1.0' in text and 'soma_sessions{phase="ADAPTING"} 1.0' in text
    _open(store, "d")
    assert 'soma_sessions{phase="WARMUP"} 1.0' in generate_latest(registry).decode()  # cached
    clock[0] = 11
    assert 'soma_sessions{phase="WARMUP"} 2.0' in generate_latest(registry).decode()


def test_a_session_is_found_by_its_transcript_key_until_it_moves_on_or_is_erased(store):
    """What the OpenAI door's history recognition reads: one key per session, replaced on each turn,
    gone with the session (no key or row of it left)."""
    _open(store, "h1")
    _open(store, "h2")
    store.set_history_key("h1", "k-turn-1")
    store.set_history_key("h2", "k-other")
    assert store.session_by_history("k-turn-1") == "h1" and store.session_by_history("k-other") == "h2"
    store.set_history_key("h1", "k-turn-2")  # the session moved on: the old transcript names nothing
    assert store.session_by_history("k-turn-1") is None and store.session_by_history("k-turn-2") == "h1"
    store.set_history_key("nope", "k-ghost")  # an unknown (or erased) session is not indexed
    assert store.session_by_history("k-ghost") is None
    store.delete("h1")
    assert store.session_by_history("k-turn-2") is None and store.session_by_history("k-other") == "h2"
    if hasattr(store, "redis"):
        assert not [k for k in store.redis.scan_iter(match=f"{store.prefix}history:*") if "k-turn" in k]
