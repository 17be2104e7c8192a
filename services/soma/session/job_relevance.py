"""Whether a queued adaptation job still matters to its session, decided before the job runs.

A job outlives the process that submitted it: the queue keeps it across restarts, and a
session may be closed, forgotten or moved on to a later adapter generation while the job
waits. Running such a job costs minutes of a GPU (or of the only CPU) for an adapter nobody
will load, so the worker asks this before it starts one. Pure: the worker reads the session
store and passes what it found.
"""

from __future__ import annotations

from dataclasses import dataclass

from soma.session.machine import Adaptation
from soma.session.records import Phase, SessionState

# the phases in which a generation's jobs are still wanted
_BUILDING = (Phase.ADAPTING, Phase.GATING)


@dataclass(frozen=True)
class StaleJob:
    reason: str  # a short label: unknown | closed | superseded | not adapting (a metric label)
    message: str  # for the job's status and the log


def stale_job(
    session_id: str, generation: int, state: SessionState | None, adaptation: Adaptation | None
) -> StaleJob | None:
    """Why the job of `generation` for this session should be dropped, or None to run it.

    `state` is the stored session (None: no such session); `adaptation` its live record's
    adaptation (None: adaptation never started for it)."""
    if state is None:
        return StaleJob("unknown", f"session {session_id!r} does not exist (unknown)")
    if state.phase is Phase.CLOSED:
        return StaleJob("closed", f"session {session_id!r} is closed")
    adaptation = adaptation or Adaptation()
    if adaptation.generation > generation:
        return StaleJob(
            "superseded",
            f"session {session_id!r} has moved on to adapter generation {adaptation.generation} (superseded)",
        )
    if adaptation.generation < generation or adaptation.phase not in _BUILDING:
        return StaleJob(
            "not adapting",
            f"session {session_id!r} is not adapting generation {generation} "
            f"(it is {adaptation.phase.value}, generation {adaptation.generation})",
        )
    return None
