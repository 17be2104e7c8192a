"""The session store in Redis (cluster mode): any dialogue replica can serve any turn.

Same contract as SqliteSessionStore. Each write is one Lua script, which Redis runs atomically:
a turn is appended together with the counters only if the session is open and the turn index
is the next one, so racing replicas can neither interleave nor lose a turn.

Keys: `{prefix}session:{id}` (a hash of the state and the live-adaptation record),
`{prefix}turns:{id}` (a list of JSON turns) and `{prefix}adapting` (a set of the sessions whose
adaptation is in progress, for the reconcile loop).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterable
from typing import Any

from soma.errors import Unavailable
from soma.session.records import Phase, ServedBy, SessionState, Turn, turn_from_dict, turn_to_dict
from soma.storage.session_store import (
    ACTIVE_PHASES,
    SessionClosed,
    SessionExists,
    SessionMissing,
    TenantFull,
    TurnConflict,
)

# KEYS: session. ARGV: the new history key, session id, the history keys' prefix.
_SET_HISTORY = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local old = redis.call('HGET', KEYS[1], 'history_key')
if old and redis.call('GET', ARGV[3] .. old) == ARGV[2] then redis.call('DEL', ARGV[3] .. old) end
redis.call('SET', ARGV[3] .. ARGV[1], ARGV[2])
redis.call('HSET', KEYS[1], 'history_key', ARGV[1])
return 1
"""

# KEYS: session, the tenant's set of open sessions. ARGV: limit (0 = none), session id, fields...
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local limit = tonumber(ARGV[1])
local held = redis.call('SCARD', KEYS[2])
if limit > 0 and held >= limit then return -1 - held end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('SADD', KEYS[2], ARGV[2])
return 1
"""

# KEYS: session, turns. ARGV: expected previous count, teacher(0/1), phase, now, turn JSON, CLOSED
_APPEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
if redis.call('HGET', KEYS[1], 'phase') == ARGV[6] then return {'closed'} end
local count = tonumber(redis.call('HGET', KEYS[1], 'turn_count'))
if count ~= tonumber(ARGV[1]) then return {'conflict', tostring(count)} end
redis.call('HINCRBY', KEYS[1], 'turn_count', 1)
redis.call('HINCRBY', KEYS[1], 'teacher_turns', tonumber(ARGV[2]))
redis.call('HINCRBY', KEYS[1], 'surrogate_turns', 1 - tonumber(ARGV[2]))
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'phase', ARGV[3]) end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[4])
redis.call('RPUSH', KEYS[2], ARGV[5])
return {'ok'}
"""

# KEYS: session, active set. ARGV: expected version, record JSON, phase, generation, now, CLOSED, active?(0/1)
_PUT_LIVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
if redis.call('HGET', KEYS[1], 'phase') == ARGV[6] then return 'closed' end
local version = tonumber(redis.call('HGET', KEYS[1], 'live_version') or '0')
if version ~= tonumber(ARGV[1]) then return 'conflict' end
redis.call('HSET', KEYS[1], 'live', ARGV[2], 'live_version', version + 1, 'phase', ARGV[3],
           'adapter_generation', ARGV[4], 'updated_at', ARGV[5])
local id = redis.call('HGET', KEYS[1], 'session_id')
if ARGV[7] == '1' then redis.call('SADD', KEYS[2], id) else redis.call('SREM', KEYS[2], id) end
return 'ok'
"""

_CLOSE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
if redis.call('HGET', KEYS[1], 'phase') == ARGV[1] then return 'closed' end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'phase', ARGV[1], 'updated_at', ARGV[2])
redis.call('SREM', KEYS[3], redis.call('HGET', KEYS[1], 'session_id'))
return 'ok'
"""


def _state(raw: dict[str, str]) -> SessionState:
    return SessionState(
        session_id=raw["session_id"],
        created_at=float(raw["created_at"]),
        updated_at=float(raw["updated_at"]),
        phase=Phase(raw["phase"]),
        system_prompt=raw["system_prompt"],
        labels=json.loads(raw["labels"]),
        turn_count=int(raw["turn_count"]),
        teacher_turns=int(raw["teacher_turns"]),
        surrogate_turns=int(raw["surrogate_turns"]),
        adapter_generation=int(raw["adapter_generation"]),
    )


def _turn_json(turn: Turn) -> str:
    return json.dumps(turn_to_dict(turn), ensure_ascii=False)


def _turn(raw: str) -> Turn:
    return turn_from_dict(json.loads(raw))


class SessionStoreUnavailable(Unavailable):
    """Redis could not be reached (down, restarting, timed out): UNAVAILABLE to the caller, whose
    request changed nothing and can be retried."""


def _unavailable_when_unreachable(cls):
    """Every public method: a Redis connection or timeout error becomes SessionStoreUnavailable
    (it would otherwise reach the client as INTERNAL)."""
    import redis

    def wrap(fn):
        @functools.wraps(fn)
        def call(self, *args, **kwargs):
            try:
                return fn(self, *args, **kwargs)
            except redis.exceptions.TimeoutError as err:  # the command may have run before the reply was lost
                raise SessionStoreUnavailable(
                    f"the session store (Redis) did not answer in time ({err}); the change may or may not have"
                    " been made: read the session (a retried turn with turn_index set is never stored twice)"
                ) from err
            except redis.exceptions.ConnectionError as err:
                raise SessionStoreUnavailable(
                    f"the session store (Redis) is unreachable ({err}); nothing was changed, retry shortly"
                ) from err

        return call

    for name, fn in list(vars(cls).items()):
        if not name.startswith("_") and callable(fn):
            setattr(cls, name, wrap(fn))
    return cls


@_unavailable_when_unreachable
class RedisSessionStore:
    """Session store in Redis; reconnects by itself (redis-py retries), so a restarted Redis
    with persistence keeps every session; while it cannot be reached, calls raise
    SessionStoreUnavailable."""

    def __init__(self, url: str, *, prefix: str = "soma:", client: Any = None):
        import redis

        self.redis = client or redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=10,
            socket_connect_timeout=5,
            health_check_interval=30,
            retry_on_timeout=True,
        )
        self.prefix = prefix
        self._create = self.redis.register_script(_CREATE)
        self._append = self.redis.register_script(_APPEND)
        self._close = self.redis.register_script(_CLOSE)
        self._put_live = self.redis.register_script(_PUT_LIVE)
        self._set_history = self.redis.register_script(_SET_HISTORY)
        self._active = f"{prefix}adapting"

    def _keys(self, session_id: str) -> list[str]:
        return [f"{self.prefix}session:{session_id}", f"{self.prefix}turns:{session_id}"]

    def _tenant_key(self, labels: dict) -> str:
        """The set of a tenant's open sessions (quotas.sessions_per_tenant counts it)."""
        return f"{self.prefix}tenant-sessions:{labels.get('tenant', '')}"

    def open_sessions_of(self, tenant: str | None) -> int:
        return int(self.redis.scard(self._tenant_key({} if tenant is None else {"tenant": tenant})))

    def create(self, state: SessionState, max_open_of_tenant: int = 0) -> None:
        fields = {
            "session_id": state.session_id,
            "created_at": repr(state.created_at),
            "updated_at": repr(state.updated_at),
            "phase": state.phase.value,
            "system_prompt": state.system_prompt,
            "labels": json.dumps(state.labels),
            "turn_count": state.turn_count,
            "teacher_turns": state.teacher_turns,
            "surrogate_turns": state.surrogate_turns,
            "adapter_generation": state.adapter_generation,
        }
        args = [x for kv in fields.items() for x in kv]
        keys = [self._keys(state.session_id)[0], self._tenant_key(state.labels)]
        status = int(self._create(keys=keys, args=[max_open_of_tenant, state.session_id, *args]))
        if status == 0:
            raise SessionExists(state.session_id)
        if status < 0:
            raise TenantFull(-1 - status)

    def get(self, session_id: str) -> SessionState | None:
        raw = self.redis.hgetall(self._keys(session_id)[0])
        return _state(raw) if raw else None

    def turns(self, session_id: str) -> list[Turn]:
        return [_turn(r) for r in self.redis.lrange(self._keys(session_id)[1], 0, -1)]

    def append_turn(self, session_id: str, turn: Turn, new_phase: Phase | None = None) -> SessionState:
        teacher = 1 if turn.served_by is ServedBy.TEACHER else 0
        result = self._append(
            keys=self._keys(session_id),
            args=[
                turn.turn_index - 1,
                teacher,
                new_phase.value if new_phase else "",
                repr(time.time()),
                _turn_json(turn),
                Phase.CLOSED.value,
            ],
        )
        status = result[0]
        if status == "missing":
            raise SessionMissing(session_id)
        if status == "closed":
            raise SessionClosed(session_id)
        if status == "conflict":
            raise TurnConflict(f"expected turn {int(result[1]) + 1}, got {turn.turn_index}")
        state = self.get(session_id)
        assert state is not None
        return state

    def set_turn_phase(self, session_id: str, turn_index: int, phase: Phase) -> None:
        from redis.exceptions import WatchError

        key = self._keys(session_id)[1]
        with self.redis.pipeline() as pipe:  # optimistic: re-read if the list changes under us
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.lindex(key, turn_index - 1)
                    if raw is None:
                        raise SessionMissing(session_id)
                    turn = _turn(raw)
                    turn.phase = phase
                    pipe.multi()
                    pipe.lset(key, turn_index - 1, _turn_json(turn))
                    pipe.execute()
                    return
                except WatchError:
                    continue

    def close(self, session_id: str) -> SessionState:
        status = self._close(keys=[*self._keys(session_id), self._active], args=[Phase.CLOSED.value, repr(time.time())])
        if status == "missing":
            raise SessionMissing(session_id)
        if status == "closed":
            raise SessionClosed(session_id)
        state = self.get(session_id)
        assert state is not None
        self.redis.srem(self._tenant_key(state.labels), session_id)
        return state

    def delete(self, session_id: str) -> bool:
        labels, history = self.redis.hmget(self._keys(session_id)[0], ["labels", "history_key"])
        pipe = self.redis.pipeline()
        pipe.delete(*self._keys(session_id))
        if history and self.redis.get(f"{self.prefix}history:{history}") == session_id:
            pipe.delete(f"{self.prefix}history:{history}")  # not when another session took the same transcript
        pipe.srem(self._active, session_id)
        if labels is not None:
            pipe.srem(self._tenant_key(json.loads(labels)), session_id)
        return bool(pipe.execute()[0])

    def get_live(self, session_id: str) -> tuple[dict | None, int]:
        raw, version = self.redis.hmget(self._keys(session_id)[0], ["live", "live_version"])
        if raw is None and version is None and not self.redis.exists(self._keys(session_id)[0]):
            raise SessionMissing(session_id)
        return (json.loads(raw) if raw else None), int(version or 0)

    def put_live(self, session_id: str, record: dict, expected_version: int, phase: Phase, generation: int) -> bool:
        status = self._put_live(
            keys=[self._keys(session_id)[0], self._active],
            args=[
                expected_version,
                json.dumps(record, ensure_ascii=False),
                phase.value,
                generation,
                repr(time.time()),
                Phase.CLOSED.value,
                1 if phase in ACTIVE_PHASES else 0,
            ],
        )
        if status == "missing":
            raise SessionMissing(session_id)
        if status == "closed":
            raise SessionClosed(session_id)
        return status == "ok"

    def idle_sessions(self, before: float) -> list[str]:
        """A SCAN over the session keys (embedded mode with Redis; a cluster's operator expires
        sessions through their SomaSessions instead)."""
        idle = []
        for key in self.redis.scan_iter(match=f"{self.prefix}session:*", count=500):
            updated = self.redis.hget(key, "updated_at")
            if updated is not None and float(updated) < before:
                idle.append(key[len(f"{self.prefix}session:") :])
        return idle

    def set_history_key(self, session_id: str, key: str) -> None:
        """One Lua script: the old index key goes, the new one points here, only while the session exists."""
        self._set_history(keys=[self._keys(session_id)[0]], args=[key, session_id, f"{self.prefix}history:"])

    def session_by_history(self, key: str) -> str | None:
        return self.redis.get(f"{self.prefix}history:{key}")

    def count_by_phase(self) -> dict[Phase, int]:
        """A SCAN over the session keys, reading each one's phase (one field, pipelined per page)."""
        counts: dict[Phase, int] = {}
        keys = list(self.redis.scan_iter(match=f"{self.prefix}session:*", count=500))
        for start in range(0, len(keys), 500):
            pipe = self.redis.pipeline(transaction=False)
            for key in keys[start : start + 500]:
                pipe.hget(key, "phase")
            for phase in pipe.execute():
                if phase is not None:
                    p = Phase(phase.decode() if isinstance(phase, bytes) else phase)
                    counts[p] = counts.get(p, 0) + 1
        return counts

    def sessions_in(self, phases: Iterable[Phase]) -> list[str]:
        wanted = set(phases)
        if wanted <= ACTIVE_PHASES:
            ids = sorted(self.redis.smembers(self._active))
            return [i for i in ids if (s := self.get(i)) is not None and s.phase in wanted]
        raise ValueError(f"sessions_in answers for {sorted(p.value for p in ACTIVE_PHASES)} only")
