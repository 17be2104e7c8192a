"""Which model serves a turn, and why. Pure: it reads session state, decides, returns.

Until live adaptation is enabled (the adaptation chain and the gate in the serving path),
every turn goes to the teacher with the full history and the session stays in WARMUP.
"""

from __future__ import annotations

from dataclasses import dataclass

from soma.session.records import Phase, ServedBy, SessionState


@dataclass(frozen=True)
class RouteDecision:
    served_by: ServedBy
    reason: str
    phase_after: Phase


def route_turn(state: SessionState) -> RouteDecision:
    turn = state.turn_count + 1
    return RouteDecision(
        served_by=ServedBy.TEACHER,
        reason=f"teacher serves turn {turn} with the full history (live adaptation off)",
        phase_after=Phase.WARMUP,
    )
