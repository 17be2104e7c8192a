"""The adaptation driver: carries out what `soma.session.reconcile` decides, over gRPC.

One `tick` reads a session's live record from the session store, asks the mining or training
service about the session's current job, runs the pure reconcile step, carries out its actions
(submit a job, ask GateService.Accept) and writes the record back with compare-and-set
(`soma.adaptation.live_store.update_live`). The
dialogue service's background loop ticks its sessions in embedded mode; the Kubernetes operator
ticks each SomaSession in cluster mode. Both run this code, so the two modes cannot diverge.

Submissions are idempotent per (session, generation) and the gate is a pure computation, so a
tick that loses a compare-and-set race is simply run again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import grpc
from opentelemetry import trace

from soma.adaptation.live_store import apply_live
from soma.algo.config import MethodConfig
from soma.session import live as live_record
from soma.session.job_token import job_name, job_token, new_secret
from soma.session.live import LiveRecord
from soma.session.reconcile import (
    JobObservation,
    ReconcilePolicy,
    RunGate,
    SubmitMining,
    SubmitTraining,
    describe,
    job_submit_failed,
    job_submit_refused,
    job_submitted,
    on_gate_result,
    reconcile,
)
from soma.session.records import Phase, ServedBy, SessionState, Turn
from soma.storage.session_store import SessionMissing, SessionStore
from soma.telemetry import metrics
from soma.telemetry.session_trace import session_span
from soma.v1 import common_pb2, gate_pb2, mining_pb2, training_pb2

log = logging.getLogger("soma.adaptation")

WARN_EVERY_S = 30.0
# a job service's answers that the same submission will get again: the request itself is wrong
PERMANENT_REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
    }
)


@dataclass
class AdaptationClients:
    """gRPC stubs of the services the chain runs on (their channels stay open with the stubs' owner)."""

    mining: Any  # MiningServiceStub
    training: Any  # TrainingServiceStub
    gate: Any  # GateServiceStub


def warm_turn_indices(turns: list[Turn], limit: int) -> list[int]:
    """The teacher-served turns the next generation adapts on: the most recent `limit` of them."""
    served = [t.turn_index for t in turns if t.served_by is ServedBy.TEACHER]
    return served[-limit:]


def compress_request(
    method: MethodConfig, system_prompt: str, history: list[Turn], query: str, session_id: str = ""
) -> gate_pb2.CompressRequest:
    """The GateService.Compress request for S̃_t: the one request both serving (a surrogate turn) and
    training (a warm turn's served context) send, so the adapter trains on what it will be served."""
    c = method.compression
    return gate_pb2.CompressRequest(
        system_prompt=system_prompt,
        turns=[gate_pb2.AnswerPair(a=t.query, b=t.answer) for t in history],
        query=query,
        recent_turns=c.recent_turns,
        summary_chars=c.summary_chars,
        summary_place=gate_pb2.SUMMARY_PLACE_SYSTEM if c.place == "system" else gate_pb2.SUMMARY_PLACE_FIRST_USER,
        max_summarized_turns=c.max_summarized_turns,
    )


def warm_turns_proto(indices: list[int], served: dict[int, list] | None = None) -> list[common_pb2.WarmTurn]:
    """The warm turns of a job by index, each with S̃_t (`served[i]`, proto messages from
    GateService.Compress) when known: the job services read S_t and a_t^F from the session store."""
    return [common_pb2.WarmTurn(turn_index=i, served_context=(served or {}).get(i, [])) for i in indices]


class AdaptationDriver:
    def __init__(
        self,
        store: SessionStore,
        clients: AdaptationClients,
        method: MethodConfig,
        policy: ReconcilePolicy,
        *,
        adapter_store: Any = None,
        rpc_timeout_s: float = 30.0,
        max_warm_turns: int | None = None,
    ):
        self.store = store
        self.clients = clients
        self.method = method
        self.policy = policy
        self.adapter_store = adapter_store
        self._orphan_candidates: set[str] = set()  # missing from the store at the last sweep
        self.rpc_timeout_s = rpc_timeout_s
        self.max_warm_turns = max_warm_turns or max(policy.machine.warm_turns, method.lora.top_warm)
        self._warned: dict[str, float] = {}
        self.channels: dict = {}

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        """A dependency that stays down is logged every WARN_EVERY_S, not on every tick."""
        now = time.monotonic()
        if now - self._warned.get(key, -WARN_EVERY_S) >= WARN_EVERY_S:
            self._warned[key] = now
            log.warning(message, *args)
        if len(self._warned) > 10_000:
            self._warned.clear()

    # -- one step -------------------------------------------------------------------------
    def tick(self, session_id: str, now: float | None = None) -> dict | None:
        """One reconcile step; returns the session's summary (see `summary`), None when it is gone."""
        seen: dict[str, SessionState] = {}

        def step(record: LiveRecord) -> LiveRecord | None:
            state = self.store.get(session_id)
            if state is None or state.closed:
                return None
            seen["state"] = state
            if not record.job_secret:  # a record from before signed jobs: mint its secret, submit next tick
                return replace(record, job_secret=new_secret())
            return self._step(session_id, state, record, time.time() if now is None else now)

        after = apply_live(
            self.store, session_id, step, writer="driver (next tick)", on_changed=self._record_changes, tries=5
        )
        return None if after is None else summary(after, seen["state"])

    def _step(self, session_id: str, state: SessionState, record: LiveRecord, now: float) -> LiveRecord:
        live = record.live
        observed = self._observe(live) if live.job_id and live.step in ("mining", "training") else None
        new_live, actions = reconcile(live, observed, now, self.policy)
        finished = {("mining", "training"), ("training", "gating")}
        if (live.step, new_live.step) in finished and live.job_started is not None:
            # the stage's job succeeded: its seconds run from the job's submission (LiveSession.job_started)
            metrics.ADAPTATION_SECONDS.labels(live.step).observe(max(0.0, now - live.job_started))
        record = replace(record, live=new_live)
        for action in actions:
            with session_span(
                session_id, record, f"soma.adaptation.{type(action).__name__}", generation=action.generation
            ):
                if isinstance(action, SubmitMining):
                    record = self._submit_mining(session_id, state, record, now)
                elif isinstance(action, SubmitTraining):
                    record = self._submit_training(session_id, state, record, action, now)
                elif isinstance(action, RunGate):
                    record = self._run_gate(session_id, state, record, action, now)
        return record

    # -- jobs -------------------------------------------------------------------------------
    def _observe(self, live) -> JobObservation | None:
        kind = live.step
        try:
            if kind == "mining":
                r = self.clients.mining.GetMiningJob(
                    mining_pb2.GetMiningJobRequest(job_id=live.job_id), timeout=self.rpc_timeout_s
                )
                result = None
                if r.job.state == common_pb2.JOB_STATE_SUCCEEDED:  # the cases stay in the job backend
                    result = {"job_id": live.job_id, "cases": len(r.cases)}
            else:
                r = self.clients.training.GetTrainingJob(
                    training_pb2.GetTrainingJobRequest(job_id=live.job_id), timeout=self.rpc_timeout_s
                )
                result = None
                if r.job.state == common_pb2.JOB_STATE_SUCCEEDED:
                    result = {  # the acceptance batch stays in the job backend: the gate step reads it
                        "job_id": live.job_id,
                        "uri": r.adapter.uri,
                        "sha256": r.adapter.sha256,
                        "metrics": dict(r.adapter.metrics),
                    }
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return JobObservation(live.job_id, "MISSING", None, err.details() or "")
            self._warn_once(
                live.job_id,
                "job %s: status unavailable (%s: %s); asking again",
                live.job_id,
                err.code().name,
                err.details(),
            )
            return None  # unknown: reconcile waits (and times the job out eventually)
        state = common_pb2.JobState.Name(r.job.state).removeprefix("JOB_STATE_")  # the names reconcile reads
        return JobObservation(live.job_id, state, result, r.job.message)

    def _warm(self, session_id: str, state: SessionState, indices: list[int] | None, *, served: bool = False):
        """The warm turns of the next job; with `served`, each with its S̃_t (training trains and gates on it).

        Raises grpc.RpcError when the gate cannot compress: the submission is then retried."""
        turns = self.store.turns(session_id)
        if indices is None:
            indices = warm_turn_indices(turns, self.max_warm_turns)
        by_index = {t.turn_index: t for t in turns}
        contexts = None
        if served and self.method.lora.context != "full":
            contexts = {}
            for i in indices:
                history = [t for t in turns if t.turn_index < i]
                request = compress_request(self.method, state.system_prompt, history, by_index[i].query)
                contexts[i] = list(self.clients.gate.Compress(request, timeout=self.rpc_timeout_s).messages)
        return indices, warm_turns_proto(indices, contexts), [by_index[i].query for i in indices]

    def _submit_mining(self, session_id: str, state: SessionState, record: LiveRecord, now: float) -> LiveRecord:
        gen = record.generation
        indices, warm, queries = self._warm(session_id, state, None)
        request = mining_pb2.SubmitMiningJobRequest(
            session_id=session_id,
            generation=gen,
            warm_turns=warm,
            generation_token=job_token(record.job_secret, "mine", session_id, gen),
        )
        try:
            job = self.clients.mining.SubmitMiningJob(request, timeout=self.rpc_timeout_s).job
        except grpc.RpcError as err:
            return replace(record, live=self._submission_failed(session_id, gen, "mining", err, record.live, now))
        log.info("session %s gen %d: mining job %s on turns %s", session_id, gen, job.job_id, indices)
        return replace(
            record,
            live=job_submitted(record.live, job.job_id, now),
            warm_turns=tuple(indices),
            warm_queries=tuple(queries),
        )

    def _submit_training(self, session_id, state, record: LiveRecord, action: SubmitTraining, now) -> LiveRecord:
        gen = record.generation
        try:
            _, warm, _ = self._warm(session_id, state, list(record.warm_turns), served=True)
        except grpc.RpcError as err:
            log.warning("session %s gen %d: served contexts unavailable (%s)", session_id, gen, err.details())
            return replace(record, live=job_submit_failed(record.live, str(err.details()), now, self.policy))
        request = training_pb2.SubmitTrainingJobRequest(
            session_id=session_id,
            generation=gen,
            warm_turns=warm,
            # the mining job of this generation (a record from before hand-off by job id holds its
            # cases inline, but the job's result is still in the backend under the same id)
            mining_job_id=(action.mined or {}).get("job_id") or job_name("mine", session_id, gen),
            generation_token=job_token(record.job_secret, "train", session_id, gen),
        )
        try:
            job = self.clients.training.SubmitTrainingJob(request, timeout=self.rpc_timeout_s).job
        except grpc.RpcError as err:
            return replace(record, live=self._submission_failed(session_id, gen, "training", err, record.live, now))
        log.info("session %s gen %d: training job %s", session_id, gen, job.job_id)
        return replace(record, live=job_submitted(record.live, job.job_id, now))

    def _submission_failed(self, session_id: str, gen: int, kind: str, err: grpc.RpcError, live, now: float):
        """A refusal that resubmitting cannot fix costs an attempt; anything else (the queue or the
        service unreachable) is retried after the backoff at no cost."""
        code = err.code()
        reason = f"{code.name if code else 'UNKNOWN'}: {err.details()}"
        if code in PERMANENT_REFUSALS:
            log.warning("session %s gen %d: %s submission refused (%s); attempt counted", session_id, gen, kind, reason)
            return job_submit_refused(live, reason, now, self.policy)
        log.warning("session %s gen %d: %s submission failed (%s); retrying", session_id, gen, kind, reason)
        return job_submit_failed(live, reason, now, self.policy)

    def _acceptance_batch(self, trained: dict) -> list[gate_pb2.AcceptanceExample]:
        """The training job's held-out acceptance batch, read from the job backend by the job's id."""
        if "acceptance" in trained:  # a record written before hand-off by job id
            return [
                gate_pb2.AcceptanceExample(teacher_answer=t, old_answer=o, new_answer=n)
                for t, o, n in trained["acceptance"]
            ]
        r = self.clients.training.GetTrainingJob(
            training_pb2.GetTrainingJobRequest(job_id=trained["job_id"]), timeout=self.rpc_timeout_s
        )
        return list(r.acceptance)

    def _run_gate(self, session_id, state, record: LiveRecord, action: RunGate, now) -> LiveRecord:
        gen, g = record.generation, self.method.gate
        trained = action.trained or {}
        try:
            batch = self._acceptance_batch(trained)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:  # the job backend lost it: this generation failed
                reason = f"the acceptance batch is gone from the job backend ({err.details()})"
                return replace(record, live=on_gate_result(record.live, gen, False, reason, now, self.policy))
            self._warn_once(
                f"gate:{session_id}",
                "session %s gen %d: training job unavailable (%s); asking again",
                session_id,
                gen,
                err.details(),
            )
            return record
        turns = self.store.turns(session_id)
        request = gate_pb2.AcceptRequest(
            session_id=session_id,
            batch=batch,
            epsilon=g.epsilon,
            delta=g.delta,
            bound=gate_pb2.Bound.Value(f"BOUND_{g.bound.upper()}"),
            max_mean_gap=g.max_mean_gap,
            current_query=turns[-1].query if turns else "",
            warm_queries=list(record.warm_queries),
            min_locality=g.min_locality if turns and record.warm_queries else 0.0,
        )
        asked = time.monotonic()
        try:
            decision = self.clients.gate.Accept(request, timeout=self.rpc_timeout_s)
        except grpc.RpcError as err:
            self._warn_once(
                f"gate:{session_id}",
                "session %s gen %d: gate unavailable (%s); asking again",
                session_id,
                gen,
                err.details(),
            )
            return record
        metrics.ADAPTATION_SECONDS.labels("gate").observe(time.monotonic() - asked)
        trace.get_current_span().set_attributes(
            {
                "soma.gate.accepted": decision.accepted,
                "soma.gate.mean_improvement": decision.mean_improvement,
                "soma.gate.bound": decision.bound,
                "soma.gate.mean_gap_new": decision.mean_gap_new,
                "soma.gate.locality": decision.locality,
                "soma.gate.batch_size": len(request.batch),
            }
        )
        log.info(
            "session %s gen %d: gate %s (%s)",
            session_id,
            gen,
            "accepted" if decision.accepted else "rejected",
            decision.reason,
        )
        live = on_gate_result(record.live, gen, decision.accepted, decision.reason, now, self.policy)
        return replace(
            record,
            live=live,
            switches=record.switches + (1 if live.adaptation.phase is Phase.SURROGATE else 0),
            drift=() if live.adaptation.phase is Phase.SURROGATE else record.drift,
        )

    def _forget_jobs(self, session_id: str, up_to_generation: int, secret: str) -> None:
        """Ask the job backend to delete what it keeps of the session's jobs (best effort: results
        also expire with the backend's result_expires)."""
        token = job_token(secret, "forget", session_id, up_to_generation) if secret else ""
        request = training_pb2.ForgetSessionJobsRequest(
            session_id=session_id, up_to_generation=up_to_generation, generation_token=token
        )
        try:
            forgotten = self.clients.training.ForgetSessionJobs(request, timeout=self.rpc_timeout_s).forgotten
        except grpc.RpcError as err:
            log.warning("session %s: could not forget its jobs (%s: %s)", session_id, err.code(), err.details())
            return
        up_to = up_to_generation or "all"
        log.info("session %s: %d job records forgotten (generations ≤ %s)", session_id, forgotten, up_to)

    def _record_changes(self, session_id: str, before: LiveRecord, after: LiveRecord) -> None:
        """Spans and metrics for the transitions this tick made (written once the record is stored);
        a generation whose chain ended (gate decided, job failed) has its job results forgotten."""
        if before.live.step != "idle" and after.live.step == "idle":
            self._forget_jobs(session_id, before.generation, after.job_secret)
        known = len(before.live.adaptation.history)
        new_transitions = after.live.adaptation.history[known:] if after.live.adaptation.history else ()
        for t in new_transitions:
            with session_span(session_id, after, "soma.session.transition", generation=t.generation) as span:
                span.set_attributes({"soma.from": t.source.value, "soma.to": t.target.value, "soma.reason": t.reason})
            if t.target is Phase.SURROGATE:
                metrics.SWITCHES.inc()
            elif t.target is Phase.FAILED:
                metrics.ADAPTATIONS_FAILED.inc()

    # -- the end of a session ---------------------------------------------------------------
    def forget(self, session_id: str) -> None:
        """Erase the session: what the job backend keeps of its jobs, every adapter generation, then
        its transcript and state."""
        try:
            raw, _ = self.store.get_live(session_id)
            secret = live_record.from_dict(raw).job_secret
        except SessionMissing:
            secret = ""  # already erased from the store: the job service needs no token then
        self._forget_jobs(session_id, 0, secret)
        if self.adapter_store is not None:
            removed = self.adapter_store.delete_session(session_id)
            log.info("session %s: %d adapter objects deleted", session_id, removed)
        self.store.delete(session_id)

    def sweep_orphans(self) -> list[str]:
        """Delete the adapters of sessions the session store no longer has: what a crash between an
        erasure and a job's own clean-up (or a store restored from an older backup) leaves behind.
        Adapters exist only for sessions created before them, so no live session loses one. Safety:
        a session is deleted only when two passes in a row found it missing, and nothing at all when
        the store holds no session while adapters exist (a store that came back empty, or another
        store's prefix, would otherwise empty the bucket); a store that cannot be read raises."""
        if self.adapter_store is None:
            return []
        stored = self.adapter_store.session_ids()
        missing = {sid for sid in stored if self.store.get(sid) is None}
        if stored and len(missing) == len(stored) and not sum(self.store.count_by_phase().values()):
            log.warning("the session store holds no session but %d have adapters: orphan sweep skipped", len(stored))
            missing = set()
        orphans = sorted(missing & self._orphan_candidates)
        self._orphan_candidates = missing - set(orphans)
        for session_id in orphans:
            removed = self.adapter_store.delete_session(session_id)
            log.warning(
                "session %s is not in the session store: %d orphaned adapter objects deleted", session_id, removed
            )
        return orphans


def summary(record: LiveRecord, state: SessionState) -> dict:
    """describe() plus counters and the last activity: what the operator mirrors into the status."""
    return {
        **describe(record.live),
        "counters": {
            "turns": state.turn_count,
            "teacherTurns": state.teacher_turns,
            "surrogateTurns": state.surrogate_turns,
            "switches": record.switches,
            "rollbacks": record.rollbacks,
        },
        "lastActivity": state.updated_at,
    }
