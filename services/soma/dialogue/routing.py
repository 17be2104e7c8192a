"""Which model serves a turn, and why. Pure: it reads the session and its live record, decides.

The teacher serves every turn until the gate accepts an adapter; from then on the session's
adapted surrogate serves with the compressed prefix, until the drift monitor rolls it back.
"""

from __future__ import annotations

from dataclasses import dataclass

from soma.session.live import LiveRecord
from soma.session.records import Phase, ServedBy, SessionState


@dataclass(frozen=True)
class RouteDecision:
    served_by: ServedBy
    reason: str
    generation: int = 0  # the adapter generation a surrogate turn is served with


def route_turn(state: SessionState, record: LiveRecord | None, *, live: bool = True) -> RouteDecision:
    turn = state.turn_count + 1
    if not live or record is None:
        return RouteDecision(
            ServedBy.TEACHER, f"teacher serves turn {turn} with the full history (live adaptation off)"
        )
    phase, generation = record.phase, record.generation
    if phase is Phase.SURROGATE:
        return RouteDecision(
            ServedBy.SURROGATE,
            f"adapted surrogate (generation {generation}) serves turn {turn} with the compressed prefix",
            generation,
        )
    why = {
        Phase.WARMUP: "warm-up",
        Phase.ADAPTING: f"adaptation of generation {generation} in progress",
        Phase.GATING: f"generation {generation} awaiting the gate",
        Phase.ROLLED_BACK: "rolled back by the drift monitor",
        Phase.FAILED: "adaptation gave up",
    }.get(phase, phase.value.lower())
    return RouteDecision(ServedBy.TEACHER, f"teacher serves turn {turn} with the full history ({why})")


def drift_rerouted(decision: RouteDecision, reason: str) -> RouteDecision:
    """The drift monitor fired on this very query: the teacher serves it."""
    return RouteDecision(ServedBy.TEACHER, f"teacher serves this turn: rolled back ({reason})")
