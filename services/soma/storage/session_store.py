"""The session store: session state and transcripts, SQLite in embedded mode.

Writes are transactions: a turn is appended together with the session's counters, only if
the session is still open and the turn index is the next one, so two replicas (or two
requests) racing on one session cannot interleave or corrupt a transcript.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from soma.session.records import Phase, ServedBy, SessionState, Turn, turn_from_dict, turn_to_dict

# phases in which a session's adaptation is under way: the reconcile loop visits these
ACTIVE_PHASES = frozenset({Phase.ADAPTING, Phase.GATING})


class SessionExists(Exception):
    pass


class SessionMissing(Exception):
    pass


class TenantFull(Exception):
    """create() refused: the tenant already holds `open_sessions` open sessions (its limit)."""

    def __init__(self, open_sessions: int):
        super().__init__(f"{open_sessions} open sessions")
        self.open_sessions = open_sessions


class SessionClosed(Exception):
    pass


class TurnConflict(Exception):
    """Another turn was stored first; the caller's view of the session is stale."""


class SessionStore(Protocol):
    def create(self, state: SessionState, max_open_of_tenant: int = 0) -> None:
        """Store a new session; with `max_open_of_tenant`, atomically refuse (TenantFull) when its
        tenant (label) already holds that many open sessions."""
        ...

    def get(self, session_id: str) -> SessionState | None: ...
    def turns(self, session_id: str) -> list[Turn]: ...
    def append_turn(self, session_id: str, turn: Turn, new_phase: Phase | None = None) -> SessionState: ...
    def set_turn_phase(self, session_id: str, turn_index: int, phase: Phase) -> None:
        """Record the phase a stored turn left the session in (known once the live record moved)."""

    def close(self, session_id: str) -> SessionState: ...
    def delete(self, session_id: str) -> bool: ...
    def get_live(self, session_id: str) -> tuple[dict | None, int]: ...
    def put_live(self, session_id: str, record: dict, expected_version: int, phase: Phase, generation: int) -> bool: ...
    def sessions_in(self, phases: Iterable[Phase]) -> list[str]: ...
    def open_sessions_of(self, tenant: str | None) -> int:
        """Sessions not closed whose `tenant` label is `tenant` (None: sessions without one)."""
        ...

    def idle_sessions(self, before: float) -> list[str]:
        """Sessions last updated before `before` (epoch seconds): what the idle TTL erases."""
        ...

    def count_by_phase(self) -> dict[Phase, int]:
        """Stored sessions per phase (soma_sessions{phase}); closed ones are erased, so not counted."""
        ...

    def set_history_key(self, session_id: str, key: str) -> None:
        """Index the session by its transcript's key (soma.session.records.history_key), replacing
        its previous one; a session erased meanwhile is not indexed."""
        ...

    def session_by_history(self, key: str) -> str | None:
        """The session whose stored transcript has this key, or None."""
        ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    phase TEXT NOT NULL,
    system_prompt TEXT NOT NULL,
    labels TEXT NOT NULL,
    turn_count INTEGER NOT NULL,
    teacher_turns INTEGER NOT NULL,
    surrogate_turns INTEGER NOT NULL,
    adapter_generation INTEGER NOT NULL,
    live TEXT NOT NULL DEFAULT '',
    live_version INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS turns (
    session_id TEXT NOT NULL REFERENCES sessions(session_id),
    turn_index INTEGER NOT NULL,
    query TEXT NOT NULL,
    answer TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (session_id, turn_index)
);
CREATE TABLE IF NOT EXISTS history_keys (
    key TEXT PRIMARY KEY,
    session_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_keys_of_session ON history_keys(session_id);
"""

# columns added after the first release: ALTER TABLE brings older files up to date
_ADDED_COLUMNS = {"live": "TEXT NOT NULL DEFAULT ''", "live_version": "INTEGER NOT NULL DEFAULT 0"}
_STATE_COLUMNS = (
    "session_id, created_at, updated_at, phase, system_prompt, labels, turn_count, teacher_turns,"
    " surrogate_turns, adapter_generation"
)


def _state_from_row(row: sqlite3.Row) -> SessionState:
    return SessionState(
        session_id=row["session_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        phase=Phase(row["phase"]),
        system_prompt=row["system_prompt"],
        labels=json.loads(row["labels"]),
        turn_count=row["turn_count"],
        teacher_turns=row["teacher_turns"],
        surrogate_turns=row["surrogate_turns"],
        adapter_generation=row["adapter_generation"],
    )


def _open_state(conn: sqlite3.Connection, session_id: str) -> SessionState:
    """The session's state; SessionMissing or SessionClosed when it cannot take a write."""
    row = conn.execute("SELECT * FROM sessions WHERE session_id=?", (session_id,)).fetchone()
    if row is None:
        raise SessionMissing(session_id)
    state = _state_from_row(row)
    if state.closed:
        raise SessionClosed(session_id)
    return state


def _turn_record(turn: Turn) -> str:
    record = turn_to_dict(turn)
    for key in ("turn_index", "query", "answer"):  # columns of their own
        record.pop(key)
    return json.dumps(record)


class SqliteSessionStore:
    """Session store in one SQLite file (WAL mode); safe across threads and processes."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as conn:
            conn.executescript(_SCHEMA)
            columns = {row["name"] for row in conn.execute("PRAGMA table_info(sessions)")}
            for name, decl in _ADDED_COLUMNS.items():  # a store written by an older soma
                if name not in columns:
                    conn.execute(f"ALTER TABLE sessions ADD COLUMN {name} {decl}")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA secure_delete=ON")  # an erased session's text is overwritten, not left in free pages
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front so concurrent writers queue instead of failing."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def create(self, state: SessionState, max_open_of_tenant: int = 0) -> None:
        try:
            with self._write() as conn:  # the count and the insert in one transaction
                if max_open_of_tenant:
                    held = self._open_of(conn, state.labels.get("tenant"))
                    if held >= max_open_of_tenant:
                        raise TenantFull(held)
                conn.execute(
                    f"INSERT INTO sessions ({_STATE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (
                        state.session_id,
                        state.created_at,
                        state.updated_at,
                        state.phase.value,
                        state.system_prompt,
                        json.dumps(state.labels),
                        state.turn_count,
                        state.teacher_turns,
                        state.surrogate_turns,
                        state.adapter_generation,
                    ),
                )
        except sqlite3.IntegrityError as err:
            raise SessionExists(state.session_id) from err

    def get(self, session_id: str) -> SessionState | None:
        row = self._conn().execute("SELECT * FROM sessions WHERE session_id=?", (session_id,)).fetchone()
        return _state_from_row(row) if row else None

    def turns(self, session_id: str) -> list[Turn]:
        rows = (
            self._conn().execute("SELECT * FROM turns WHERE session_id=? ORDER BY turn_index", (session_id,)).fetchall()
        )
        return [
            turn_from_dict(
                {
                    **json.loads(row["record"]),
                    "turn_index": row["turn_index"],
                    "query": row["query"],
                    "answer": row["answer"],
                }
            )
            for row in rows
        ]

    def append_turn(self, session_id: str, turn: Turn, new_phase: Phase | None = None) -> SessionState:
        """Store the next turn and update counters atomically (the phase too, unless None: with
        live adaptation the phase moves only with the live record, see put_live).

        The counters move with a conditional UPDATE (open session, expected turn index), so the
        common case is one UPDATE and one INSERT in a single transaction; only a refused write
        reads the row back to say why.
        """
        teacher = 1 if turn.served_by is ServedBy.TEACHER else 0
        with self._write() as conn:
            updated = conn.execute(
                "UPDATE sessions SET turn_count=turn_count+1, teacher_turns=teacher_turns+?,"
                " surrogate_turns=surrogate_turns+?, phase=COALESCE(?, phase), updated_at=?"
                " WHERE session_id=? AND phase!=? AND turn_count=?",
                (
                    teacher,
                    1 - teacher,
                    new_phase.value if new_phase else None,
                    time.time(),
                    session_id,
                    Phase.CLOSED.value,
                    turn.turn_index - 1,
                ),
            ).rowcount
            if updated != 1:
                state = _open_state(conn, session_id)
                raise TurnConflict(f"expected turn {state.turn_count + 1}, got {turn.turn_index}")
            conn.execute(
                "INSERT INTO turns VALUES (?,?,?,?,?)",
                (session_id, turn.turn_index, turn.query, turn.answer, _turn_record(turn)),
            )
            row = conn.execute("SELECT * FROM sessions WHERE session_id=?", (session_id,)).fetchone()
        return _state_from_row(row)

    def set_turn_phase(self, session_id: str, turn_index: int, phase: Phase) -> None:
        with self._write() as conn:
            row = conn.execute(
                "SELECT record FROM turns WHERE session_id=? AND turn_index=?", (session_id, turn_index)
            ).fetchone()
            if row is None:
                raise SessionMissing(session_id)
            record = {**json.loads(row["record"]), "phase": phase.value}
            conn.execute(
                "UPDATE turns SET record=? WHERE session_id=? AND turn_index=?",
                (json.dumps(record), session_id, turn_index),
            )

    def close(self, session_id: str) -> SessionState:
        """Mark the session CLOSED and delete its transcript; the state row stays as a tombstone."""
        with self._write() as conn:
            state = _open_state(conn, session_id)
            conn.execute("DELETE FROM turns WHERE session_id=?", (session_id,))
            state.phase = Phase.CLOSED
            state.updated_at = time.time()
            conn.execute(
                "UPDATE sessions SET phase=?, updated_at=? WHERE session_id=?",
                (state.phase.value, state.updated_at, session_id),
            )
        return state

    def delete(self, session_id: str) -> bool:
        """Remove the session entirely (the operator's finalizer and TTL); False when unknown."""
        with self._write() as conn:
            conn.execute("DELETE FROM turns WHERE session_id=?", (session_id,))
            conn.execute("DELETE FROM history_keys WHERE session_id=?", (session_id,))
            deleted = conn.execute("DELETE FROM sessions WHERE session_id=?", (session_id,)).rowcount == 1
        # the write-ahead log still holds the pages as they were: fold it into the (secure_delete)
        # database and empty it, so the erased text is gone from disk (skipped while readers hold it;
        # the next erasure or SQLite's own checkpoint does it then)
        self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return deleted

    def get_live(self, session_id: str) -> tuple[dict | None, int]:
        row = (
            self._conn().execute("SELECT live, live_version FROM sessions WHERE session_id=?", (session_id,)).fetchone()
        )
        if row is None:
            raise SessionMissing(session_id)
        return (json.loads(row["live"]) if row["live"] else None), row["live_version"]

    def put_live(self, session_id: str, record: dict, expected_version: int, phase: Phase, generation: int) -> bool:
        """Compare-and-set the live record (and the phase and generation shown to clients);
        False when another writer got there first: re-read and re-apply."""
        with self._write() as conn:
            updated = conn.execute(
                "UPDATE sessions SET live=?, live_version=live_version+1, phase=?, adapter_generation=?,"
                " updated_at=? WHERE session_id=? AND live_version=? AND phase!=?",
                (
                    json.dumps(record),
                    phase.value,
                    generation,
                    time.time(),
                    session_id,
                    expected_version,
                    Phase.CLOSED.value,
                ),
            ).rowcount
            if updated != 1:
                _open_state(conn, session_id)  # SessionMissing / SessionClosed say why
                return False
        return True

    def idle_sessions(self, before: float) -> list[str]:
        rows = self._conn().execute("SELECT session_id FROM sessions WHERE updated_at < ?", (before,)).fetchall()
        return [r["session_id"] for r in rows]

    def open_sessions_of(self, tenant: str | None) -> int:
        return self._open_of(self._conn(), tenant)

    @staticmethod
    def _open_of(conn: sqlite3.Connection, tenant: str | None) -> int:
        row = conn.execute(
            "SELECT COUNT(*) AS n FROM sessions WHERE phase != ? AND json_extract(labels, '$.tenant') IS ?",
            (Phase.CLOSED.value, tenant),
        ).fetchone()
        return int(row["n"])

    def set_history_key(self, session_id: str, key: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM history_keys WHERE session_id=?", (session_id,))
            conn.execute(
                "INSERT OR REPLACE INTO history_keys (key, session_id)"
                " SELECT ?, session_id FROM sessions WHERE session_id=?",
                (key, session_id),
            )

    def session_by_history(self, key: str) -> str | None:
        row = self._conn().execute("SELECT session_id FROM history_keys WHERE key=?", (key,)).fetchone()
        return row["session_id"] if row else None

    def count_by_phase(self) -> dict[Phase, int]:
        rows = self._conn().execute("SELECT phase, COUNT(*) AS n FROM sessions GROUP BY phase")
        return {Phase(row["phase"]): int(row["n"]) for row in rows}

    def sessions_in(self, phases: Iterable[Phase]) -> list[str]:
        values = [p.value for p in phases]
        rows = self._conn().execute(
            f"SELECT session_id FROM sessions WHERE phase IN ({','.join('?' * len(values))})", values
        )
        return [row["session_id"] for row in rows]


def open_session_store(settings: Any) -> SessionStore:
    """The configured store (soma.config.DialogueSettings): SQLite in embedded mode, Redis in a cluster."""
    if settings.session_store == "redis":
        from soma.storage.redis_session_store import RedisSessionStore

        return RedisSessionStore(settings.redis_url)
    return SqliteSessionStore(settings.session_db)
