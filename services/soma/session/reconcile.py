"""One reconcile step of a session's adaptation, as a pure function.

The dialogue service's background loop (embedded mode) and the Kubernetes operator (cluster
mode) both call `reconcile` with the session's stored `LiveSession` and what they observed of
its current job; they carry out the returned actions (submit a job, run the gate) and store
the new state. Nothing here does I/O, so every transition, retry and timeout is unit-tested.

    ADAPTING/idle ──submit mining──▶ ADAPTING/mining ──ok──▶ ADAPTING/training ──ok──▶ GATING/gating
         ▲                                │ failed or timed out       │ failed or timed out      │
         └──── after backoff (generation + 1) ◀──────────────────────┘                          │
                                          └── attempts exhausted ──▶ FAILED (the teacher serves) │
    GATING ── on_gate_result: accepted ──▶ SURROGATE; rejected ──▶ retry as above ◀──────────────┘
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from soma.session import machine
from soma.session.records import Phase

Step = Literal["idle", "mining", "training", "gating"]


@dataclass(frozen=True)
class ReconcilePolicy:
    machine: machine.Policy = machine.Policy()
    job_timeout_s: float = 1800.0  # a job in flight longer than this counts as failed
    backoff_s: float = 5.0  # wait before attempt n+1: backoff_s * 2**(n-1)

    def __post_init__(self) -> None:
        if self.job_timeout_s <= 0 or self.backoff_s < 0:
            raise ValueError("job_timeout_s must be > 0 and backoff_s ≥ 0")


@dataclass(frozen=True)
class JobObservation:
    job_id: str
    state: str  # QUEUED | RUNNING | SUCCEEDED | FAILED | CANCELLED | MISSING
    result: dict | None = None
    message: str = ""


@dataclass(frozen=True)
class LiveSession:
    adaptation: machine.Adaptation = machine.Adaptation()
    step: Step = "idle"
    job_id: str | None = None
    job_started: float | None = None
    not_before: float = 0.0  # no new submission before this time (retry backoff)
    mined: dict | None = None
    trained: dict | None = None


@dataclass(frozen=True)
class SubmitMining:
    generation: int


@dataclass(frozen=True)
class SubmitTraining:
    generation: int
    mined: dict


@dataclass(frozen=True)
class RunGate:
    generation: int
    trained: dict


Action = SubmitMining | SubmitTraining | RunGate


def _failed(live: LiveSession, reason: str, now: float, policy: ReconcilePolicy) -> LiveSession:
    adaptation = machine.on_job_failed(live.adaptation, live.adaptation.generation, reason, policy.machine)
    delay = policy.backoff_s * 2 ** max(0, adaptation.attempts - 1)
    return LiveSession(adaptation, "idle", None, None, now + delay)


def reconcile(
    live: LiveSession, observed: JobObservation | None, now: float, policy: ReconcilePolicy
) -> tuple[LiveSession, list[Action]]:
    """Advance one step; `observed` is the status of live.job_id (None when there is no job)."""
    phase, generation = live.adaptation.phase, live.adaptation.generation
    if phase is Phase.ADAPTING and live.step == "idle":
        if now < live.not_before:
            return live, []
        return replace(live, step="mining", job_id=None, job_started=now, mined=None, trained=None), [
            SubmitMining(generation)
        ]
    if live.step in ("mining", "training") and phase in (Phase.ADAPTING, Phase.GATING):
        if live.step == "training" and live.job_started is None:  # its submission failed: again, after backoff
            if now < live.not_before:
                return live, []
            return replace(live, job_started=now), [SubmitTraining(generation, live.mined or {})]
        if observed is None or observed.job_id != live.job_id:
            if live.job_started is not None and now - live.job_started > policy.job_timeout_s:
                return _failed(live, f"{live.step} job timed out after {policy.job_timeout_s:.0f} s", now, policy), []
            return live, []  # not submitted yet, or a stale observation: wait
        if observed.state == "SUCCEEDED":
            if live.step == "mining":
                return replace(live, step="training", job_id=None, job_started=now, mined=observed.result), [
                    SubmitTraining(generation, observed.result or {})
                ]
            adaptation = machine.on_training_done(live.adaptation, generation)
            return replace(live, adaptation=adaptation, step="gating", trained=observed.result, job_started=now), [
                RunGate(generation, observed.result or {})
            ]
        if observed.state in ("FAILED", "CANCELLED", "MISSING"):
            return _failed(live, f"{live.step} job {observed.state.lower()}: {observed.message}", now, policy), []
        if live.job_started is not None and now - live.job_started > policy.job_timeout_s:
            return _failed(live, f"{live.step} job timed out after {policy.job_timeout_s:.0f} s", now, policy), []
    if live.step == "gating" and phase is Phase.GATING:
        # the gate call is idempotent: when no result came back (the gate was down), ask again
        if live.job_started is None or now - live.job_started > max(policy.backoff_s, 1.0):
            return replace(live, job_started=now), [RunGate(generation, live.trained or {})]
    return live, []


def job_submit_failed(live: LiveSession, reason: str, now: float, policy: ReconcilePolicy) -> LiveSession:
    """The queue refused a submission (it was never enqueued): try again after the backoff, no
    attempt used up; submissions are idempotent per (session, generation)."""
    if live.step == "mining":
        return replace(live, step="idle", job_id=None, job_started=None, not_before=now + policy.backoff_s)
    if live.step == "training":
        return replace(live, job_started=None, not_before=now + policy.backoff_s, job_id=None)
    return live


def job_submit_refused(live: LiveSession, reason: str, now: float, policy: ReconcilePolicy) -> LiveSession:
    """The job service refused a submission for good (the request itself is wrong: invalid, not
    signed, the session is not building that generation): resubmitting the same one cannot help, so
    the attempt is counted and the next generation starts after the backoff; when attempts run out
    the session is FAILED and the teacher keeps serving it."""
    if live.step not in ("mining", "training"):
        return live
    return _failed(live, f"{live.step} submission refused: {reason}", now, policy)


def job_submitted(live: LiveSession, job_id: str, now: float) -> LiveSession:
    """Record the id of the job a SubmitMining / SubmitTraining action created."""
    return replace(live, job_id=job_id, job_started=now)


def on_gate_result(
    live: LiveSession, generation: int, accepted: bool, reason: str, now: float, policy: ReconcilePolicy
) -> LiveSession:
    if live.step != "gating" or generation != live.adaptation.generation:
        return live  # a late result for an older generation
    adaptation = machine.on_gate_decision(live.adaptation, generation, accepted, reason, policy.machine)
    if adaptation.phase is Phase.SURROGATE:
        return replace(live, adaptation=adaptation, step="idle", job_id=None, job_started=None)
    delay = policy.backoff_s * 2 ** max(0, adaptation.attempts - 1)
    return LiveSession(adaptation, "idle", None, None, now + delay)


def on_turn(live: LiveSession, turn_count: int, by_teacher: bool, policy: ReconcilePolicy) -> LiveSession:
    return replace(live, adaptation=machine.on_turn_served(live.adaptation, turn_count, by_teacher, policy.machine))


def on_drift(live: LiveSession, reason: str) -> LiveSession:
    return replace(live, adaptation=machine.on_drift(live.adaptation, reason), trained=None)


def describe(live: LiveSession) -> dict[str, Any]:
    """A JSON-able summary (for the session store, GetSession and the SomaSession status)."""
    a = live.adaptation
    return {
        "phase": a.phase.value,
        "generation": a.generation,
        "attempts": a.attempts,
        "step": live.step,
        "job_id": live.job_id,
        "adapter_uri": (live.trained or {}).get("uri"),
        "adapter_sha256": (live.trained or {}).get("sha256"),
        "last_reason": a.history[-1].reason if a.history else "",
    }
