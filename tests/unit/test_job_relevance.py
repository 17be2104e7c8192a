"""Whether a queued job still matters to its session (soma.session.job_relevance), every case."""

import pytest

from soma.session.job_relevance import stale_job
from soma.session.machine import Adaptation
from soma.session.records import Phase, SessionState


def _state(phase: Phase = Phase.ADAPTING) -> SessionState:
    return SessionState(session_id="s", created_at=0.0, updated_at=0.0, phase=phase)


@pytest.mark.parametrize("phase", [Phase.ADAPTING, Phase.GATING])
def test_the_generation_being_built_runs(phase):
    assert stale_job("s", 2, _state(phase), Adaptation(phase=phase, generation=2)) is None


@pytest.mark.parametrize(
    ("state", "adaptation", "reason"),
    [
        (None, None, "unknown"),
        (_state(Phase.CLOSED), Adaptation(phase=Phase.ADAPTING, generation=2), "closed"),
        (_state(), Adaptation(phase=Phase.ADAPTING, generation=3), "superseded"),  # a retry moved on
        (_state(Phase.SURROGATE), Adaptation(phase=Phase.SURROGATE, generation=3), "superseded"),
        (_state(Phase.FAILED), Adaptation(phase=Phase.FAILED, generation=2), "not adapting"),  # gave up
        (_state(Phase.WARMUP), None, "not adapting"),  # adaptation never started
        (_state(), Adaptation(phase=Phase.ADAPTING, generation=1), "not adapting"),  # a generation not yet begun
        (_state(Phase.SURROGATE), Adaptation(phase=Phase.SURROGATE, generation=2), "not adapting"),  # served already
    ],
)
def test_jobs_nobody_waits_for_are_stale(state, adaptation, reason):
    stale = stale_job("s", 2, state, adaptation)
    assert stale is not None and stale.reason == reason
    assert "'s'" in stale.message and reason in stale.message
