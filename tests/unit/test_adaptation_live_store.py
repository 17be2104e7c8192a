"""update_live: the one compare-and-set update of a live record that both writers use."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from soma.adaptation.live_store import LiveRecordContended, apply_live, update_live
from soma.session import live as live_record
from soma.session.live import LiveRecord
from soma.session.records import SessionState
from soma.storage.session_store import SqliteSessionStore


@pytest.fixture
def store(tmp_path):
    store = SqliteSessionStore(tmp_path / "s.db")
    now = time.time()
    store.create(SessionState("s1", now, now))
    record = LiveRecord(trace_id="t0")
    store.put_live("s1", live_record.to_dict(record), 0, record.phase, record.generation)
    return store


def _stored(store) -> LiveRecord:
    return live_record.from_dict(store.get_live("s1")[0])


def test_a_change_is_written_and_reported(store):
    seen = []
    after = apply_live(
        store, "s1", lambda r: replace(r, trace_id="t1"), writer="test", on_changed=lambda *a: seen.append(a)
    )
    assert after.trace_id == "t1" and _stored(store).trace_id == "t1"
    assert [(sid, b.trace_id, a.trace_id) for sid, b, a in seen] == [("s1", "t0", "t1")]
    # no change: nothing written, nothing reported
    assert apply_live(store, "s1", lambda r: r, writer="test", on_changed=lambda *a: seen.append(a)) == after
    assert len(seen) == 1


def test_a_race_reapplies_the_change_to_the_newer_record(store):
    calls = []

    def change(record):
        calls.append(record.trace_id)
        if len(calls) == 1:  # another writer gets in between this read and this write
            raw, version = store.get_live("s1")
            store.put_live("s1", {**raw, "span_id": "other"}, version, record.phase, record.generation)
        return replace(record, trace_id=record.trace_id + "+mine")

    update = update_live(store, "s1", change)
    assert len(calls) == 2 and update.after.trace_id == "t0+mine"
    assert (_stored(store).trace_id, _stored(store).span_id) == ("t0+mine", "other")  # both writes kept


def test_gone_and_contended(store):
    assert update_live(store, "nope", lambda r: r) is None
    assert update_live(store, "s1", lambda r: None) is None  # the writer gave up

    def always_raced(record):
        raw, version = store.get_live("s1")
        store.put_live("s1", raw, version, record.phase, record.generation)  # bumps the version every time
        return replace(record, trace_id="never")

    with pytest.raises(LiveRecordContended):
        update_live(store, "s1", always_raced, tries=3)
    assert apply_live(store, "s1", always_raced, writer="test", on_changed=lambda *a: None, tries=3) is None
    assert _stored(store).trace_id == "t0"
