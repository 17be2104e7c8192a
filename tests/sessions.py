"""Sessions put straight into a session store, for tests of the parts that read them (job services
and workers)."""

from __future__ import annotations

import time

from soma.session.job_token import job_token
from soma.session.live import LiveRecord, to_dict
from soma.session.machine import Adaptation
from soma.session.reconcile import LiveSession
from soma.session.records import Phase, ServedBy, SessionState, Turn

SECRET = "73" * 32  # every test session's job-signing secret (soma.session.job_token)

# (query, teacher answer, finish reason) of the turns a test session holds
TURNS = (
    ("hello world python code", "the answer is code", "stop"),
    ("print a list", "print the list value", "length"),
    ("what is a dict", "a dict maps keys to values", "stop"),
)


def adapting_session(store, session_id: str, generation: int = 1, turns=TURNS) -> None:
    """A session whose adapter `generation` is being built (phase ADAPTING) after `turns` served by
    the teacher (indices 1, 2, ...), as the driver leaves it before it submits the generation's jobs."""
    now = time.time()
    store.create(SessionState(session_id=session_id, created_at=now, updated_at=now))
    for i, (query, answer, finish) in enumerate(turns, start=1):
        turn = Turn(i, query, answer, ServedBy.TEACHER, "warm-up", Phase.WARMUP, 1, 1, 1.0, 1.0, finish)
        store.append_turn(session_id, turn, None)
    live = LiveSession(adaptation=Adaptation(phase=Phase.ADAPTING, generation=generation))
    record = LiveRecord(live=live, job_secret=SECRET)
    assert store.put_live(session_id, to_dict(record), 0, Phase.ADAPTING, generation)


def signed(kind: str, session_id: str, generation: int = 1) -> str:
    """The generation token the session's driver would send with its job."""
    return job_token(SECRET, kind, session_id, generation)
