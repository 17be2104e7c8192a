"""The dialogue service's side of live adaptation: what a turn reads and writes of the session's
live record, the drift check, the compressed prefix, and the background reconcile loop.

Routing itself is pure (routing.py); the chain's jobs are carried out by the adaptation driver
(soma.session.driver), which this module's loop ticks in embedded mode and the Kubernetes
operator ticks in cluster mode.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import grpc

from soma.algo.config import MethodConfig
from soma.algo.drift import TurnCheck
from soma.session import live as live_record
from soma.session.driver import AdaptationDriver, compress_request
from soma.session.live import LiveRecord
from soma.session.reconcile import ReconcilePolicy
from soma.session.records import Phase, SessionState, Turn
from soma.storage.session_store import ACTIVE_PHASES, SessionClosed, SessionMissing, SessionStore
from soma.telemetry import metrics
from soma.telemetry.session_trace import session_span
from soma.v1 import gate_pb2
from soma.wire import messages_from_proto

log = logging.getLogger("soma.dialogue")


@dataclass
class DriftOutcome:
    check: TurnCheck | None  # None: the gate could not be asked; the turn is not counted
    rollback_reason: str = ""


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
        """A new session's record: WARMUP, and the trace its spans join."""
        record = LiveRecord(trace_id=trace_ids[0], span_id=trace_ids[1])
        self.store.put_live(session_id, live_record.to_dict(record), 0, record.phase, record.generation)

    def drift(self, session_id: str, record: LiveRecord, query: str) -> DriftOutcome:
        """The drift monitor's check of a query the surrogate is about to serve."""
        d = self.method.drift
        try:
            r = self.gate.ObserveTurn(
                gate_pb2.ObserveTurnRequest(
                    session_id=session_id,
                    query=query,
                    warm_queries=list(record.warm_queries),
                    min_locality=d.min_locality,
                ),
                timeout=self.rpc_timeout_s,
            )
        except grpc.RpcError as err:
            log.warning("session %s: drift check unavailable (%s); turn not counted", session_id, err.details())
            return DriftOutcome(None)
        check = TurnCheck(r.locality, r.locality_ok)
        _, fire = live_record.drift_check(record, check, d.consecutive, d.window)
        reason = ""
        if fire:
            reason = (
                f"{d.consecutive} turns in a row off the session's topic "
                f"(locality {r.locality:.3f} < drift.min_locality {d.min_locality})"
            )
        return DriftOutcome(check, reason)

    def surrogate_messages(self, state: SessionState, history: list[Turn], query: str) -> list[dict[str, str]]:
        """S̃_t: the summary of the older turns, the last K turns and the query (GateService.Compress)."""
        response = self.gate.Compress(
            compress_request(self.method, state.system_prompt, history, query), timeout=self.rpc_timeout_s
        )
        return messages_from_proto(response.messages)

    def commit_turn(
        self, session_id: str, turn_count: int, by_teacher: bool, drift: DriftOutcome | None
    ) -> LiveRecord | None:
        """After a stored turn: the drift check (and rollback), then the turn's own transition.
        Compare-and-set, re-applied on a race with the driver; None when the session is gone."""
        for _ in range(10):
            try:
                raw, version = self.store.get_live(session_id)
            except SessionMissing:
                return None
            before = live_record.from_dict(raw)
            record = before
            if drift is not None and drift.check is not None and record.phase is Phase.SURROGATE:
                record, _ = live_record.drift_check(
                    record, drift.check, self.method.drift.consecutive, self.method.drift.window
                )
                if drift.rollback_reason:
                    record = live_record.roll_back(record, drift.rollback_reason)
            record = live_record.after_turn(record, turn_count, by_teacher, self.policy)
            if record == before:
                return record
            try:
                if self.store.put_live(
                    session_id, live_record.to_dict(record), version, record.phase, record.generation
                ):
                    self._report(session_id, before, record)
                    return record
            except (SessionMissing, SessionClosed):
                return None
        log.error("session %s: could not store the turn's adaptation state after 10 tries", session_id)
        return None

    def _report(self, session_id: str, before: LiveRecord, after: LiveRecord) -> None:
        for t in after.live.adaptation.history[len(before.live.adaptation.history) :]:
            with session_span(session_id, after, "soma.session.transition", generation=t.generation) as span:
                span.set_attributes({"soma.from": t.source.value, "soma.to": t.target.value, "soma.reason": t.reason})
            log.info("session %s: %s -> %s (%s)", session_id, t.source.value, t.target.value, t.reason)
            if t.target is Phase.ROLLED_BACK:
                metrics.ROLLBACKS.inc()
            if t.target is Phase.ADAPTING and self.on_adapting is not None:
                self.on_adapting()


class ReconcileLoop:
    """Embedded mode's stand-in for the operator: ticks every session whose adaptation is under
    way, every `interval_s` or at once when a turn starts an adaptation."""

    def __init__(self, driver: AdaptationDriver, store: SessionStore, interval_s: float):
        self.driver = driver
        self.store = store
        self.interval_s = interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soma-reconcile", daemon=True)

    def start(self) -> ReconcileLoop:
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for session_id in self.store.sessions_in(ACTIVE_PHASES):
                    if self._stop.is_set():
                        return
                    self.driver.tick(session_id)
            except Exception:  # noqa: BLE001 - the loop must outlive a bad tick; the next one retries
                log.exception("reconcile loop: tick failed; retrying in %.1f s", self.interval_s)
            self._wake.wait(self.interval_s)
            self._wake.clear()
