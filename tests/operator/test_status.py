"""status.py: which tick writes what to a SomaSession's status, and when a session has expired."""

from __future__ import annotations

from soma_operator import status as st

NOW = 1_800_000_000.0


def report(phase="WARMUP", step="idle", generation=0, uri=None, turns=0, activity=None, reason="r"):
    return {
        "phase": phase,
        "generation": generation,
        "attempts": 0,
        "step": step,
        "job_id": None,
        "adapter_uri": uri,
        "adapter_sha256": None,
        "last_reason": reason,
        "counters": {"turns": turns, "teacherTurns": turns, "surrogateTurns": 0, "switches": 0, "rollbacks": 0},
        "lastActivity": activity,
    }


def decide(current, rep, *, written=None, interval=60.0, now=NOW, generation=1):
    return st.decide(
        current, rep, generation=generation, now=now, counters_written_at=written, counters_interval_s=interval
    )


def written(rep, now=NOW):
    """The status a tick at `now` would have written for `rep`."""
    return st.from_report(rep, st.initial_status(now - 100, 1), 1, now)


def test_initial_status_is_warmup_with_both_conditions_false():
    status = st.initial_status(NOW, 3)
    assert status["phase"] == "WARMUP" and status["step"] == "idle" and status["observedGeneration"] == 3
    assert status["counters"] == dict.fromkeys(st.COUNTER_KEYS, 0)
    assert status["lastActivity"] == st.rfc3339(NOW)
    assert [(c["type"], c["status"], c["reason"]) for c in status["conditions"]] == [
        ("Adapted", "False", "WarmingUp"),
        ("Failed", "False", "NoFailure"),
    ]


def test_a_phase_change_writes_the_whole_status_with_conditions():
    before = written(report("GATING", "gating", 1))
    after = report("SURROGATE", "idle", 1, uri="s3://b/s/1", reason="gate accepted generation 1: ok")
    decision = decide(before, after, written=NOW - 1)  # counters were just written: the change still writes
    assert decision.cause == "change" and decision.writes_counters
    patch = decision.patch
    assert patch["phase"] == "SURROGATE" and patch["adapterUri"] == "s3://b/s/1" and patch["adapterGeneration"] == 1
    adapted = next(c for c in patch["conditions"] if c["type"] == "Adapted")
    assert adapted["status"] == "True" and adapted["reason"] == "GateAccepted"
    assert adapted["message"] == "gate accepted generation 1: ok" and adapted["lastTransitionTime"] == st.rfc3339(NOW)


def test_each_tracked_field_alone_triggers_a_write():
    base = report("ADAPTING", "mining", 1)
    current = written(base)
    for changed in (
        report("GATING", "mining", 1),
        report("ADAPTING", "training", 1),
        report("ADAPTING", "mining", 2),
        report("ADAPTING", "mining", 1, uri="s3://b/s/1"),
    ):
        assert decide(current, changed, written=NOW).cause == "change"
    assert decide(current, base, written=NOW, generation=2).cause == "change"  # spec edited: observedGeneration


def test_failed_phase_sets_the_failed_condition():
    patch = decide(written(report("ADAPTING", "training", 3)), report("FAILED", "idle", 3, reason="giving up")).patch
    failed = next(c for c in patch["conditions"] if c["type"] == "Failed")
    assert (failed["status"], failed["reason"], failed["message"]) == ("True", "AttemptsExhausted", "giving up")


def test_unchanged_state_writes_nothing():
    rep = report("ADAPTING", "mining", 1, turns=4, activity=NOW - 30)
    assert decide(written(rep), rep, written=NOW - 5).patch is None
    assert decide(written(rep), rep, written=None).patch is None  # due, but nothing moved


def test_counters_alone_wait_for_the_cadence():
    current = written(report("SURROGATE", "idle", 1, turns=10, activity=NOW - 100))
    newer = report("SURROGATE", "idle", 1, turns=11, activity=NOW - 1)
    assert decide(current, newer, written=NOW - 59, interval=60).patch is None
    decision = decide(current, newer, written=NOW - 60, interval=60)
    assert decision.cause == "counters" and decision.writes_counters
    assert decision.patch["counters"]["turns"] == 11 and decision.patch["lastActivity"] == st.rfc3339(NOW - 1)
    assert decide(current, newer, written=None).cause == "counters"  # first tick since the operator started


def test_lasttransitiontime_is_kept_while_a_condition_holds():
    first = st.conditions("ADAPTING", "a", None, NOW - 500)
    again = st.conditions("GATING", "b", first, NOW)
    assert [c["lastTransitionTime"] for c in again] == [st.rfc3339(NOW - 500)] * 2  # both still False
    switched = st.conditions("SURROGATE", "c", again, NOW + 10)
    assert switched[0]["lastTransitionTime"] == st.rfc3339(NOW + 10)
    assert switched[1]["lastTransitionTime"] == st.rfc3339(NOW - 500)


def test_a_session_gone_from_the_store_is_marked_closed_once():
    decision = decide(written(report("SURROGATE")), None)
    assert decision.cause == "closed" and decision.patch["phase"] == "CLOSED"
    assert decision.patch["conditions"][0]["reason"] == "SessionClosed" and not decision.writes_counters
    assert decide({**written(report()), "phase": "CLOSED"}, None).patch is None


def test_ttl_counts_from_last_activity_else_creation():
    assert st.ttl_expired(60, NOW - 61, NOW - 10_000, NOW)
    assert not st.ttl_expired(60, NOW - 59, NOW - 10_000, NOW)  # recent activity keeps an old session
    assert st.ttl_expired(60, None, NOW - 61, NOW)
    assert not st.ttl_expired(60, None, NOW - 59, NOW)
    assert not st.ttl_expired(60, None, None, NOW)  # nothing known: never guess
    assert not st.ttl_expired(None, NOW - 10_000, None, NOW)


def test_times_roundtrip_through_rfc3339():
    assert st.parse_time(st.rfc3339(NOW)) == NOW
    assert st.parse_time("2026-11-22T15:00:00+00:00") == st.parse_time("2026-11-22T15:00:00Z")
    assert st.parse_time(None) is None and st.parse_time("yesterday") is None and st.parse_time(5) == 5.0
