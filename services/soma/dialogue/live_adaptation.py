"""The dialogue service's side of live adaptation: what a turn reads and writes of the session's
live record, the drift check and the compressed prefix.

Routing itself is pure (routing.py); the chain's jobs are carried out by the adaptation driver
(soma.adaptation.driver), which the reconcile loop (soma.adaptation.loop) ticks in embedded mode
and the Kubernetes operator ticks in cluster mode.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import grpc

from soma.adaptation.driver import compress_request
from soma.adaptation.live_store import apply_live
from soma.algo.config import MethodConfig
from soma.algo.drift import TurnCheck
from soma.session import live as live_record
from soma.session.job_token import new_secret
from soma.session.live import LiveRecord
from soma.session.reconcile import ReconcilePolicy
from soma.session.records import Phase, SessionState, Turn
from soma.storage.session_store import SessionStore
from soma.telemetry import metrics
from soma.telemetry.session_trace import session_span
from soma.v1 import gate_pb2

log = logging.getLogger("soma.dialogue")


@dataclass
class DriftOutcome:
    check: TurnCheck | None  # None: the gate could not be asked; the turn is not counted
    rollback_reason: str = ""
    # the drift check as computed at plan time: the record it read, and that record after the check
    planned_on: LiveRecord | None = None
    checked: LiveRecord | None = None


@dataclass
class SurrogatePlan:
    drift: DriftOutcome
    messages: list | None  # S̃_t as protobuf messages, forwarded to the surrogate as they are; None: gate failed
    error: grpc.RpcError | None = None


class LiveAdaptation:
    """Per-turn reads and writes of the live record, over the session store and the gate."""

    def __init__(
        self,
        store: SessionStore,
        gate: Any,  # GateServiceStub
        method: MethodConfig,
        policy: ReconcilePolicy,
        *,
        rpc_timeout_s: float = 30.0,
        on_adapting=None,  # called when a turn starts an adaptation (wakes the reconcile loop)
        channels: dict | None = None,  # kept open here: stubs do not hold their channels
    ):
        self.channels = channels or {}
        self.store = store
        self.gate = gate
        self.method = method
        self.policy = policy
        self.rpc_timeout_s = rpc_timeout_s
        self.on_adapting = on_adapting

    def record(self, session_id: str) -> LiveRecord:
        raw, _ = self.store.get_live(session_id)
        return live_record.from_dict(raw)

    def start(self, session_id: str, trace_ids: tuple[str, str]) -> None:
        """A new session's record: WARMUP, the trace its spans join, and the secret its jobs are signed with."""
        record = LiveRecord(trace_id=trace_ids[0], span_id=trace_ids[1], job_secret=new_secret())
        self.store.put_live(session_id, live_record.to_dict(record), 0, record.phase, record.generation)

    def plan_surrogate_turn(
        self, session_id: str, record: LiveRecord, state: SessionState, history: list[Turn], query: str
    ) -> SurrogatePlan:
        """One gate call for a turn the surrogate is about to serve: S̃_t (the summary of the older
        turns, the last K turns and the query) and the drift monitor's check of the query."""
        d = self.method.drift
        request = compress_request(self.method, state.system_prompt, history, query)
        if record.warm_queries:
            request.observe.CopyFrom(
                gate_pb2.ObserveTurnRequest(
                    session_id=session_id,
                    query=query,
                    warm_queries=list(record.warm_queries),
                    min_locality=d.min_locality,
                )
            )
        try:
            response = self.gate.Compress(request, timeout=self.rpc_timeout_s)
        except grpc.RpcError as err:
            log.warning("session %s: the gate is unavailable (%s); drift check not counted", session_id, err.details())
            return SurrogatePlan(DriftOutcome(None), None, err)
        if not response.HasField("observed"):
            return SurrogatePlan(DriftOutcome(None), list(response.messages))
        check = TurnCheck(response.observed.locality, response.observed.locality_ok)
        checked, fire = live_record.drift_check(record, check, d.consecutive, d.window)
        reason = ""
        if fire:
            reason = (
                f"{d.consecutive} turns in a row off the session's topic "
                f"(locality {check.locality:.3f} < drift.min_locality {d.min_locality})"
            )
        return SurrogatePlan(DriftOutcome(check, reason, record, checked), list(response.messages))

    def commit_turn(
        self, session_id: str, turn_count: int, by_teacher: bool, drift: DriftOutcome | None
    ) -> LiveRecord | None:
        """After a stored turn: the drift check (and rollback), then the turn's own transition.
        Compare-and-set, re-applied on a race with the driver; None when the session is gone."""

        def turn(record: LiveRecord) -> LiveRecord:
            if drift is not None and drift.check is not None and record.phase is Phase.SURROGATE:
                if drift.checked is not None and record == drift.planned_on:
                    record = drift.checked  # the check the plan computed, on this very record
                else:  # the driver wrote in between: check the record as it is now
                    record, _ = live_record.drift_check(
                        record, drift.check, self.method.drift.consecutive, self.method.drift.window
                    )
                if drift.rollback_reason:
                    record = live_record.roll_back(record, drift.rollback_reason)
            return live_record.after_turn(record, turn_count, by_teacher, self.policy)

        return apply_live(
            self.store, session_id, turn, writer="dialogue service (turn not counted)", on_changed=self._report
        )

    def _report(self, session_id: str, before: LiveRecord, after: LiveRecord) -> None:
        for t in after.live.adaptation.history[len(before.live.adaptation.history) :]:
            with session_span(session_id, after, "soma.session.transition", generation=t.generation) as span:
                span.set_attributes({"soma.from": t.source.value, "soma.to": t.target.value, "soma.reason": t.reason})
            log.info("session %s: %s -> %s (%s)", session_id, t.source.value, t.target.value, t.reason)
            if t.target is Phase.ROLLED_BACK:
                metrics.ROLLBACKS.inc()
            if t.target is Phase.ADAPTING and self.on_adapting is not None:
                self.on_adapting()
