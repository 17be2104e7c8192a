"""A session's live-adaptation record, what the session store keeps of it, and the pure changes
a served turn makes to it.

The record is written with compare-and-set on a version number by two writers: the turn path
(turn counts, drift checks, rollbacks) and the adaptation driver (jobs, gate, switch). Each
writer re-reads and re-applies its change when the version moved, and every change is guarded
by phase and generation (soma.session.machine), so neither can undo the other's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from soma.algo.drift import DriftMonitor, TurnCheck
from soma.session import machine
from soma.session.reconcile import LiveSession, ReconcilePolicy, on_drift, on_turn
from soma.session.records import Phase

HISTORY_KEPT = 32  # transitions kept in the record (the trace keeps all of them)


@dataclass(frozen=True)
class LiveRecord:
    live: LiveSession = LiveSession()
    warm_turns: tuple[int, ...] = ()  # turn indices the current generation was adapted on
    warm_queries: tuple[str, ...] = ()  # their queries: the centroid of the locality checks
    drift: tuple[bool, ...] = ()  # the drift monitor's window of turn checks (True = passed)
    switches: int = 0
    rollbacks: int = 0
    trace_id: str = ""  # the session's trace (hex), started by OpenSession
    span_id: str = ""
    job_secret: str = ""  # signs the session's jobs (soma.session.job_token); never leaves the store

    @property
    def phase(self) -> Phase:
        return self.live.adaptation.phase

    @property
    def generation(self) -> int:
        return self.live.adaptation.generation


def _adaptation_to_dict(a: machine.Adaptation) -> dict[str, Any]:
    return {
        "phase": a.phase.value,
        "generation": a.generation,
        "attempts": a.attempts,
        "teacher_turns_since_rollback": a.teacher_turns_since_rollback,
        "history": [[t.source.value, t.target.value, t.reason, t.generation] for t in a.history[-HISTORY_KEPT:]],
    }


def _adaptation_from_dict(d: dict[str, Any]) -> machine.Adaptation:
    return machine.Adaptation(
        phase=Phase(d["phase"]),
        generation=int(d["generation"]),
        attempts=int(d["attempts"]),
        teacher_turns_since_rollback=int(d["teacher_turns_since_rollback"]),
        history=tuple(machine.Transition(Phase(s), Phase(t), r, int(g)) for s, t, r, g in d["history"]),
    )


def to_dict(record: LiveRecord) -> dict[str, Any]:
    live = record.live
    return {
        "adaptation": _adaptation_to_dict(live.adaptation),
        "step": live.step,
        "job_id": live.job_id,
        "job_started": live.job_started,
        "not_before": live.not_before,
        "mined": live.mined,
        "trained": live.trained,
        "warm_turns": list(record.warm_turns),
        "warm_queries": list(record.warm_queries),
        "drift": list(record.drift),
        "switches": record.switches,
        "rollbacks": record.rollbacks,
        "trace_id": record.trace_id,
        "span_id": record.span_id,
        "job_secret": record.job_secret,
    }


def from_dict(d: dict[str, Any] | None) -> LiveRecord:
    if not d:
        return LiveRecord()
    live = LiveSession(
        adaptation=_adaptation_from_dict(d["adaptation"]),
        step=d["step"],
        job_id=d["job_id"],
        job_started=d["job_started"],
        not_before=float(d["not_before"]),
        mined=d["mined"],
        trained=d["trained"],
    )
    return LiveRecord(
        live=live,
        warm_turns=tuple(d.get("warm_turns", ())),
        warm_queries=tuple(d.get("warm_queries", ())),
        drift=tuple(d.get("drift", ())),
        switches=int(d.get("switches", 0)),
        rollbacks=int(d.get("rollbacks", 0)),
        trace_id=d.get("trace_id", ""),
        span_id=d.get("span_id", ""),
        job_secret=d.get("job_secret", ""),
    )


def drift_check(record: LiveRecord, check: TurnCheck, consecutive: int, window: int) -> tuple[LiveRecord, bool]:
    """Feed one surrogate turn's check to the drift monitor; True when the session must roll back."""
    monitor = DriftMonitor(consecutive, window, history=list(record.drift))
    fire = monitor.observe(check)
    return replace(record, drift=tuple(monitor.history)), fire


def roll_back(record: LiveRecord, reason: str) -> LiveRecord:
    """Back to the teacher: the drift window starts over; re-adaptation (generation + 1) will refresh
    the warm turns, hence the summary and the centroid."""
    if record.phase is not Phase.SURROGATE:
        return record
    return replace(record, live=on_drift(record.live, reason), drift=(), rollbacks=record.rollbacks + 1)


def after_turn(record: LiveRecord, turn_count: int, by_teacher: bool, policy: ReconcilePolicy) -> LiveRecord:
    """The stored turn moves the session (warm window reached, re-adaptation after a rollback)."""
    return replace(record, live=on_turn(record.live, turn_count, by_teacher, policy))


def switched(before: LiveRecord, after: LiveRecord) -> bool:
    return before.phase is not Phase.SURROGATE and after.phase is Phase.SURROGATE
