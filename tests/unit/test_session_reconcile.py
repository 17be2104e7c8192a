"""Every transition, retry and timeout of the pure reconcile step."""

from __future__ import annotations

from soma.session import machine
from soma.session.reconcile import (
    JobObservation,
    LiveSession,
    ReconcilePolicy,
    RunGate,
    SubmitMining,
    SubmitTraining,
    describe,
    job_submitted,
    on_drift,
    on_gate_result,
    on_turn,
    reconcile,
)
from soma.session.records import Phase

POLICY = ReconcilePolicy(machine.Policy(warm_turns=2, max_attempts=2), job_timeout_s=100.0, backoff_s=10.0)


def _adapting() -> LiveSession:
    live = LiveSession()
    live = on_turn(live, 1, True, POLICY)
    assert live.adaptation.phase is Phase.WARMUP
    live = on_turn(live, 2, True, POLICY)
    assert live.adaptation.phase is Phase.ADAPTING and live.adaptation.generation == 1
    return live


def test_happy_path_mining_training_gate_switch():
    live, actions = reconcile(_adapting(), None, now=0.0, policy=POLICY)
    assert actions == [SubmitMining(1)] and live.step == "mining"
    live = job_submitted(live, "mine-s-1", 0.0)
    same, actions = reconcile(live, JobObservation("mine-s-1", "RUNNING"), 5.0, POLICY)
    assert same == live and actions == []
    live, actions = reconcile(live, JobObservation("mine-s-1", "SUCCEEDED", {"cases": [1]}), 6.0, POLICY)
    assert actions == [SubmitTraining(1, {"cases": [1]})] and live.step == "training"
    live = job_submitted(live, "train-s-1", 6.0)
    live, actions = reconcile(live, JobObservation("train-s-1", "SUCCEEDED", {"uri": "u", "sha256": "h"}), 9.0, POLICY)
    assert actions == [RunGate(1, {"uri": "u", "sha256": "h"})]
    assert live.adaptation.phase is Phase.GATING and live.step == "gating"
    live = on_gate_result(live, 1, True, "improvement ok", 10.0, POLICY)
    assert live.adaptation.phase is Phase.SURROGATE and live.adaptation.serves_with_surrogate
    assert describe(live)["adapter_uri"] == "u" and "gate accepted" in describe(live)["last_reason"]


def test_failed_job_retries_after_backoff_with_a_new_generation_then_gives_up():
    live, _ = reconcile(_adapting(), None, 0.0, POLICY)
    live = job_submitted(live, "mine-s-1", 0.0)
    live, actions = reconcile(live, JobObservation("mine-s-1", "FAILED", message="boom"), 1.0, POLICY)
    assert actions == [] and live.adaptation.phase is Phase.ADAPTING and live.adaptation.generation == 2
    assert live.not_before == 11.0 and "boom" in live.adaptation.history[-1].reason
    waiting, actions = reconcile(live, None, 5.0, POLICY)
    assert actions == [] and waiting == live  # still backing off
    live, actions = reconcile(live, None, 11.0, POLICY)
    assert actions == [SubmitMining(2)]
    live = job_submitted(live, "mine-s-2", 11.0)
    live, _ = reconcile(live, JobObservation("mine-s-2", "MISSING"), 12.0, POLICY)
    assert live.adaptation.phase is Phase.FAILED and "giving up after 2" in live.adaptation.history[-1].reason
    assert reconcile(live, None, 1000.0, POLICY) == (live, [])  # FAILED stays put; the teacher serves


def test_a_job_that_runs_too_long_times_out():
    live, _ = reconcile(_adapting(), None, 0.0, POLICY)
    live = job_submitted(live, "mine-s-1", 0.0)
    live, _ = reconcile(live, JobObservation("mine-s-1", "RUNNING"), 101.0, POLICY)
    assert live.adaptation.generation == 2 and "timed out" in live.adaptation.history[-1].reason
    # a submission that never got an id also times out
    live, _ = reconcile(live, None, 111.0, POLICY)
    live, _ = reconcile(live, None, 250.0, POLICY)
    assert live.adaptation.phase is Phase.FAILED


def test_stale_observations_and_late_gate_results_are_ignored():
    live, _ = reconcile(_adapting(), None, 0.0, POLICY)
    live = job_submitted(live, "mine-s-1", 0.0)
    same, actions = reconcile(live, JobObservation("mine-s-0", "SUCCEEDED", {}), 1.0, POLICY)
    assert same == live and actions == []
    assert on_gate_result(live, 1, True, "late", 2.0, POLICY) == live  # not gating


def test_gate_rejection_retries_and_drift_rolls_back():
    live, _ = reconcile(_adapting(), None, 0.0, POLICY)
    live = job_submitted(live, "m", 0.0)
    live, _ = reconcile(live, JobObservation("m", "SUCCEEDED", {}), 1.0, POLICY)
    live = job_submitted(live, "t", 1.0)
    live, _ = reconcile(live, JobObservation("t", "SUCCEEDED", {"uri": "u"}), 2.0, POLICY)
    rejected = on_gate_result(live, 1, False, "no improvement", 3.0, POLICY)
    assert rejected.adaptation.phase is Phase.ADAPTING and rejected.adaptation.generation == 2
    assert rejected.not_before == 13.0
    accepted = on_gate_result(live, 1, True, "ok", 3.0, POLICY)
    rolled = on_drift(accepted, "2 off-topic turns")
    assert rolled.adaptation.phase is Phase.ROLLED_BACK and rolled.trained is None
    rolled = on_turn(rolled, 9, True, POLICY)
    rolled = on_turn(rolled, 10, True, POLICY)
    assert rolled.adaptation.phase is Phase.ADAPTING and rolled.adaptation.generation == 2


def test_refused_submissions_are_retried_without_using_an_attempt():
    from soma.session.reconcile import job_submit_failed

    live, _ = reconcile(_adapting(), None, 0.0, POLICY)
    live = job_submit_failed(live, "queue down", 0.0, POLICY)
    assert live.step == "idle" and live.adaptation.attempts == 0 and live.not_before == 10.0
    live, actions = reconcile(live, None, 10.0, POLICY)
    assert actions == [SubmitMining(1)]
    live = job_submitted(live, "m", 10.0)
    live, actions = reconcile(live, JobObservation("m", "SUCCEEDED", {"cases": []}), 11.0, POLICY)
    assert actions == [SubmitTraining(1, {"cases": []})]
    live = job_submit_failed(live, "queue down", 11.0, POLICY)
    assert reconcile(live, None, 15.0, POLICY)[1] == []
    live, actions = reconcile(live, None, 21.0, POLICY)
    assert actions == [SubmitTraining(1, {"cases": []})] and live.adaptation.attempts == 0


def test_a_lost_gate_call_is_asked_again():
    live, _ = reconcile(_adapting(), None, 0.0, POLICY)
    live = job_submitted(live, "m", 0.0)
    live, _ = reconcile(live, JobObservation("m", "SUCCEEDED", {}), 1.0, POLICY)
    live = job_submitted(live, "t", 1.0)
    live, actions = reconcile(live, JobObservation("t", "SUCCEEDED", {"uri": "u"}), 2.0, POLICY)
    assert actions == [RunGate(1, {"uri": "u"})]
    assert reconcile(live, None, 5.0, POLICY)[1] == []  # give the gate call time
    live, actions = reconcile(live, None, 13.0, POLICY)
    assert actions == [RunGate(1, {"uri": "u"})]  # no result came back: ask again
