"""The live record (what the session store keeps of a session's adaptation), the turn-side changes
to it, and the routing decision read from it."""

from __future__ import annotations

import json
import time
from dataclasses import replace

from soma.algo.drift import TurnCheck
from soma.dialogue.routing import route_turn
from soma.session import live as live_record
from soma.session import machine
from soma.session.live import LiveRecord
from soma.session.reconcile import ReconcilePolicy
from soma.session.records import Phase, ServedBy, SessionState

POLICY = ReconcilePolicy(machine.Policy(warm_turns=2, rewarm_turns=2, max_attempts=3))


def _switched() -> LiveRecord:
    record = LiveRecord(trace_id="ab" * 16, span_id="cd" * 8)
    for turn in (1, 2):
        record = live_record.after_turn(record, turn, True, POLICY)
    a = machine.on_training_done(record.live.adaptation, 1)
    a = machine.on_gate_decision(a, 1, True, "ok", POLICY.machine)
    return replace(record, live=replace(record.live, adaptation=a), warm_queries=("q1", "q2"), warm_turns=(1, 2))


def test_the_record_survives_its_json_round_trip():
    record = replace(_switched(), drift=(True, False), switches=1, rollbacks=2)
    again = live_record.from_dict(json.loads(json.dumps(live_record.to_dict(record))))
    assert again == record
    assert live_record.from_dict(None) == LiveRecord()


def test_the_warm_window_starts_adaptation():
    record = live_record.after_turn(LiveRecord(), 1, True, POLICY)
    assert record.phase is Phase.WARMUP
    record = live_record.after_turn(record, 2, True, POLICY)
    assert (record.phase, record.generation) == (Phase.ADAPTING, 1)


def test_drift_rolls_back_after_consecutive_failures_only():
    record = _switched()
    bad, good = TurnCheck(0.1, False), TurnCheck(0.9, True)
    record, fire = live_record.drift_check(record, bad, 2, 8)
    assert not fire
    record, fire = live_record.drift_check(record, good, 2, 8)  # a pass resets the run
    assert not fire
    record, fire = live_record.drift_check(record, bad, 2, 8)
    assert not fire
    record, fire = live_record.drift_check(record, bad, 2, 8)
    assert fire and record.drift == (False, True, False, False)
    rolled = live_record.roll_back(record, "off topic")
    assert rolled.phase is Phase.ROLLED_BACK and rolled.rollbacks == 1 and rolled.drift == ()
    assert live_record.roll_back(rolled, "again") == rolled  # only a switched session rolls back


def test_re_adaptation_after_rewarm_turns_is_a_new_generation():
    record = live_record.roll_back(_switched(), "off topic")
    record = live_record.after_turn(record, 5, True, POLICY)
    assert record.phase is Phase.ROLLED_BACK
    record = live_record.after_turn(record, 6, True, POLICY)
    assert (record.phase, record.generation) == (Phase.ADAPTING, 2)


def test_routing_follows_the_phase():
    now = time.time()
    state = SessionState("s", now, now, turn_count=3)
    teacher = route_turn(state, LiveRecord())
    assert teacher.served_by is ServedBy.TEACHER and "warm-up" in teacher.reason
    switched = route_turn(state, _switched())
    assert switched.served_by is ServedBy.SURROGATE and switched.generation == 1 and "turn 4" in switched.reason
    off = route_turn(state, _switched(), live=False)
    assert off.served_by is ServedBy.TEACHER and "live adaptation off" in off.reason
    rolled = route_turn(state, live_record.roll_back(_switched(), "x"))
    assert rolled.served_by is ServedBy.TEACHER and "rolled back" in rolled.reason
