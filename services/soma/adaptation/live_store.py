"""`update_live`: the one compare-and-set update of a session's live record.

Two writers change a live record: the dialogue service after each turn and the adaptation driver
on each tick. Both read it, compute the new record from what they read, and write it back only if
nobody wrote in between; on a race they re-read and compute again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from soma.session import live as live_record
from soma.session.live import LiveRecord
from soma.storage.session_store import SessionClosed, SessionMissing, SessionStore

log = logging.getLogger("soma.adaptation")


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


def apply_live(
    store: SessionStore,
    session_id: str,
    change: Callable[[LiveRecord], LiveRecord | None],
    *,
    writer: str,
    on_changed: Callable[[str, LiveRecord, LiveRecord], None],
    tries: int = 10,
) -> LiveRecord | None:
    """`update_live` as both writers use it: `on_changed(session_id, before, after)` after a write
    that changed the record; None (logged, naming the writer) when the session is gone or the
    record stayed contended."""
    try:
        update = update_live(store, session_id, change, tries=tries)
    except LiveRecordContended:
        log.warning("session %s: the live record kept changing under the %s after %d tries", session_id, writer, tries)
        return None
    if update is None:
        return None
    if update.changed:
        on_changed(session_id, update.before, update.after)
    return update.after
