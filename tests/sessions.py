"""Sessions put straight into a session store, for tests of the parts that read them (job workers)."""

from __future__ import annotations

import time

from soma.session.live import LiveRecord, to_dict
from soma.session.machine import Adaptation
from soma.session.reconcile import LiveSession
from soma.session.records import Phase, SessionState


def adapting_session(store, session_id: str, generation: int = 1) -> None:
    """A session whose adapter `generation` is being built (phase ADAPTING), as the driver leaves it
    before it submits the generation's jobs."""
    now = time.time()
    store.create(SessionState(session_id=session_id, created_at=now, updated_at=now))
    record = LiveRecord(live=LiveSession(adaptation=Adaptation(phase=Phase.ADAPTING, generation=generation)))
    assert store.put_live(session_id, to_dict(record), 0, Phase.ADAPTING, generation)
