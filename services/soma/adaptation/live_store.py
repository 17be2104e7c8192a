"""`update_live`: the one compare-and-set update of a session's live record.

Two writers change a live record: the dialogue service after each turn and the adaptation driver
on each tick. Both read it, compute the new record from what they read, and write it back only if
nobody wrote in between; on a race they re-read and compute again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from soma.session import live as live_record
from soma.session.live import LiveRecord
from soma.storage.session_store import SessionClosed, SessionMissing, SessionStore


class LiveRecordContended(RuntimeError):
    """The live record changed under the writer on every try."""


@dataclass(frozen=True)
class LiveUpdate:
    before: LiveRecord
    after: LiveRecord

    @property
    def changed(self) -> bool:
        return self.after != self.before


def update_live(
    store: SessionStore,
    session_id: str,
    change: Callable[[LiveRecord], LiveRecord | None],
    *,
    tries: int = 10,
) -> LiveUpdate | None:
    """Apply `change` to the stored live record with compare-and-set, re-applied on a race.

    `change` may run more than once, so it must be safe to repeat (the driver's job submissions
    are idempotent per session and generation). It returns None to give up (the session is gone).
    Returns None when the session is missing or closed; raises LiveRecordContended after `tries`.
    """
    for _ in range(tries):
        try:
            raw, version = store.get_live(session_id)
        except SessionMissing:
            return None
        before = live_record.from_dict(raw)
        after = change(before)
        if after is None:
            return None
        if after == before:
            return LiveUpdate(before, after)
        try:
            if store.put_live(session_id, live_record.to_dict(after), version, after.phase, after.generation):
                return LiveUpdate(before, after)
        except (SessionMissing, SessionClosed):
            return None
    raise LiveRecordContended(f"session {session_id}: the live record changed under the writer {tries} times")
