"""The per-session state machine of live adaptation, as plain functions over plain data.

WARMUP → ADAPTING → GATING → SURROGATE ⇄ ROLLED_BACK → ADAPTING (generation + 1) → …; any
phase → CLOSED; ADAPTING/GATING → FAILED after too many failed attempts (the teacher keeps
serving). Every transition carries a reason. Events about an older adapter generation are
ignored, so a late job result can never move a session that has moved on. The dialogue
service, the operator and the benchmark all drive the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from soma.session.records import Phase


@dataclass(frozen=True)
class Policy:
    warm_turns: int = 4  # W: the teacher serves turns 1..W before adaptation starts
    rewarm_turns: int = 2  # after a rollback, teacher turns before re-adapting
    max_attempts: int = 3  # failed adaptations (job failure or gate rejection) before FAILED

    def __post_init__(self) -> None:
        if self.warm_turns < 1 or self.rewarm_turns < 1 or self.max_attempts < 1:
            raise ValueError("warm_turns, rewarm_turns and max_attempts must be ≥ 1")


@dataclass(frozen=True)
class Transition:
    source: Phase
    target: Phase
    reason: str
    generation: int


@dataclass(frozen=True)
class Adaptation:
    """Where a session stands in its adaptation life."""

    phase: Phase = Phase.WARMUP
    generation: int = 0  # adapter generation being built or served; 0 = none yet
    attempts: int = 0  # failed attempts since the last success
    teacher_turns_since_rollback: int = 0
    history: tuple[Transition, ...] = field(default_factory=tuple)

    @property
    def serves_with_surrogate(self) -> bool:
        return self.phase is Phase.SURROGATE


def _move(state: Adaptation, target: Phase, reason: str, **changes) -> Adaptation:
    moved = replace(state, phase=target, **changes)
    return replace(moved, history=(*state.history, Transition(state.phase, target, reason, moved.generation)))


def on_turn_served(state: Adaptation, turn_count: int, by_teacher: bool, policy: Policy) -> Adaptation:
    """After each stored turn: start adaptation at the warm window, or again after a rollback."""
    if state.phase is Phase.WARMUP and turn_count >= policy.warm_turns:
        return _move(
            state, Phase.ADAPTING, f"warm window of {policy.warm_turns} turns reached", generation=state.generation + 1
        )
    if state.phase is Phase.ROLLED_BACK and by_teacher:
        served = state.teacher_turns_since_rollback + 1
        if served >= policy.rewarm_turns:
            return _move(
                state,
                Phase.ADAPTING,
                f"re-adapting after {served} teacher turns since the rollback",
                generation=state.generation + 1,
                teacher_turns_since_rollback=0,
            )
        return replace(state, teacher_turns_since_rollback=served)
    return state


def on_training_done(state: Adaptation, generation: int) -> Adaptation:
    if state.phase is not Phase.ADAPTING or generation != state.generation:
        return state
    return _move(state, Phase.GATING, f"adapter generation {generation} trained")


def _failed_attempt(state: Adaptation, reason: str, policy: Policy) -> Adaptation:
    attempts = state.attempts + 1
    if attempts >= policy.max_attempts:
        return _move(state, Phase.FAILED, f"{reason}; giving up after {attempts} attempts", attempts=attempts)
    return _move(
        state,
        Phase.ADAPTING,
        f"{reason}; retrying (attempt {attempts + 1})",
        attempts=attempts,
        generation=state.generation + 1,
    )


def on_job_failed(state: Adaptation, generation: int, reason: str, policy: Policy) -> Adaptation:
    if state.phase not in (Phase.ADAPTING, Phase.GATING) or generation != state.generation:
        return state
    return _failed_attempt(state, f"adaptation job failed: {reason}", policy)


def on_gate_decision(state: Adaptation, generation: int, accepted: bool, reason: str, policy: Policy) -> Adaptation:
    if state.phase is not Phase.GATING or generation != state.generation:
        return state
    if accepted:
        return _move(state, Phase.SURROGATE, f"gate accepted generation {generation}: {reason}", attempts=0)
    return _failed_attempt(state, f"gate rejected generation {generation}: {reason}", policy)


def on_drift(state: Adaptation, reason: str) -> Adaptation:
    if state.phase is not Phase.SURROGATE:
        return state
    return _move(state, Phase.ROLLED_BACK, f"drift monitor: {reason}", teacher_turns_since_rollback=0)


def on_close(state: Adaptation) -> Adaptation:
    if state.phase is Phase.CLOSED:
        return state
    return _move(state, Phase.CLOSED, "session closed")
