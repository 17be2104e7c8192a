"""The session store in Redis (cluster mode): any dialogue replica can serve any turn.

Same contract as SqliteSessionStore. Each write is one Lua script, which Redis runs atomically:
a turn is appended together with the counters only if the session is open and the turn index
is the next one, so racing replicas can neither interleave nor lose a turn.

Keys: `{prefix}session:{id}` (a hash of the state) and `{prefix}turns:{id}` (a list of JSON turns).
"""

from __future__ import annotations

import json
import time
from typing import Any

from soma.session.records import Phase, ServedBy, SessionState, Turn, turn_from_dict, turn_to_dict
from soma.storage.session_store import SessionClosed, SessionExists, SessionMissing, TurnConflict

_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
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
redis.call('HSET', KEYS[1], 'phase', ARGV[3], 'updated_at', ARGV[4])
redis.call('RPUSH', KEYS[2], ARGV[5])
return {'ok'}
"""

_CLOSE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
if redis.call('HGET', KEYS[1], 'phase') == ARGV[1] then return 'closed' end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'phase', ARGV[1], 'updated_at', ARGV[2])
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


class RedisSessionStore:
    """Session store in Redis; reconnects by itself (redis-py retries), so a restarted Redis
    with persistence keeps every session."""

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

    def _keys(self, session_id: str) -> list[str]:
        return [f"{self.prefix}session:{session_id}", f"{self.prefix}turns:{session_id}"]

    def create(self, state: SessionState) -> None:
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
        if not self._create(keys=self._keys(state.session_id)[:1], args=args):
            raise SessionExists(state.session_id)

    def get(self, session_id: str) -> SessionState | None:
        raw = self.redis.hgetall(self._keys(session_id)[0])
        return _state(raw) if raw else None

    def turns(self, session_id: str) -> list[Turn]:
        return [_turn(r) for r in self.redis.lrange(self._keys(session_id)[1], 0, -1)]

    def append_turn(self, session_id: str, turn: Turn, new_phase: Phase) -> SessionState:
        teacher = 1 if turn.served_by is ServedBy.TEACHER else 0
        result = self._append(
            keys=self._keys(session_id),
            args=[
                turn.turn_index - 1,
                teacher,
                new_phase.value,
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

    def close(self, session_id: str) -> SessionState:
        status = self._close(keys=self._keys(session_id), args=[Phase.CLOSED.value, repr(time.time())])
        if status == "missing":
            raise SessionMissing(session_id)
        if status == "closed":
            raise SessionClosed(session_id)
        state = self.get(session_id)
        assert state is not None
        return state
