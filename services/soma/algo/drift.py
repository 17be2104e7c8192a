"""The drift monitor: rolls a session back to the teacher after m_cons consecutive failed turns.

Every surrogate-served turn reports whether it passed (its query is close enough to the
warm-start centroid and, on sampled turns, its shadow Gap is small enough). A success resets
the run; only `consecutive` failures in a row trigger a rollback.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TurnCheck:
    locality: float
    locality_ok: bool
    gap: float | None = None
    gap_ok: bool = True

    @property
    def ok(self) -> bool:
        return self.locality_ok and self.gap_ok


@dataclass
class DriftMonitor:
    consecutive: int = 2
    window: int = 8
    history: deque = field(default_factory=deque)

    def __post_init__(self) -> None:
        if self.consecutive < 1 or self.window < self.consecutive:
            raise ValueError(f"need 1 ≤ consecutive ≤ window, got {self.consecutive}, {self.window}")
        self.history = deque(self.history, maxlen=self.window)

    def observe(self, check: TurnCheck) -> bool:
        """Record one turn; True when the session must roll back."""
        self.history.append(check.ok)
        return self.failures_in_a_row() >= self.consecutive

    def failures_in_a_row(self) -> int:
        run = 0
        for ok in reversed(self.history):
            if ok:
                break
            run += 1
        return run

    def reset(self) -> None:
        self.history.clear()
