"""The session state machine: every transition, retries, give-up, stale events."""

import pytest

from soma.session import machine as m
from soma.session.records import Phase

POLICY = m.Policy(warm_turns=3, rewarm_turns=2, max_attempts=2)


def _warm(state=None):
    state = state or m.Adaptation()
    for turn in (1, 2, 3):
        state = m.on_turn_served(state, turn, True, POLICY)
    return state


def test_full_life_with_rollback_and_readaptation():
    s = m.Adaptation()
    s = m.on_turn_served(s, 2, True, POLICY)
    assert s.phase is Phase.WARMUP
    s = _warm()
    assert (s.phase, s.generation) == (Phase.ADAPTING, 1)
    s = m.on_training_done(s, 1)
    assert s.phase is Phase.GATING
    s = m.on_gate_decision(s, 1, True, "improvement 0.2 ≥ 0.1", POLICY)
    assert s.serves_with_surrogate
    s = m.on_drift(s, "2 consecutive locality failures")
    assert s.phase is Phase.ROLLED_BACK
    s = m.on_turn_served(s, 6, True, POLICY)
    assert s.phase is Phase.ROLLED_BACK  # one teacher turn is not enough
    s = m.on_turn_served(s, 7, True, POLICY)
    assert (s.phase, s.generation) == (Phase.ADAPTING, 2)
    assert [t.target for t in s.history] == [
        Phase.ADAPTING,
        Phase.GATING,
        Phase.SURROGATE,
        Phase.ROLLED_BACK,
        Phase.ADAPTING,
    ]
    assert all(t.reason for t in s.history)


def test_rejection_retries_with_a_new_generation_then_gives_up():
    s = m.on_training_done(_warm(), 1)
    s = m.on_gate_decision(s, 1, False, "bound too wide", POLICY)
    assert (s.phase, s.generation, s.attempts) == (Phase.ADAPTING, 2, 1)
    s = m.on_job_failed(s, 2, "worker lost", POLICY)
    assert s.phase is Phase.FAILED and "giving up after 2 attempts" in s.history[-1].reason


def test_stale_events_are_ignored():
    s = m.on_training_done(_warm(), 1)
    s = m.on_gate_decision(s, 1, False, "no", POLICY)  # now generation 2, ADAPTING
    assert m.on_training_done(s, 1) == s
    assert m.on_job_failed(s, 1, "late failure of gen 1", POLICY) == s
    assert m.on_gate_decision(s, 1, True, "late accept of gen 1", POLICY) == s
    assert m.on_drift(s, "not serving with G") == s


def test_close_from_anywhere_once():
    s = m.on_close(_warm())
    assert s.phase is Phase.CLOSED
    assert m.on_close(s) == s


def test_policy_validation():
    with pytest.raises(ValueError):
        m.Policy(warm_turns=0)
