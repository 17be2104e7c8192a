"""DialogueService: sessions, turns streamed from the model the router picks, transcripts.

A turn is stored only once its answer is complete: a failed or cancelled turn leaves the
transcript exactly as it was, so the client can retry it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry import trace

from soma.config import DialogueSettings, QuotaSettings
from soma.dialogue.live_adaptation import LiveAdaptation
from soma.dialogue.quotas import Refusal, TenantQuotas, stored_bytes
from soma.dialogue.routing import RouteDecision, drift_rerouted, route_turn
from soma.errors import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    SomaError,
    Unavailable,
)
from soma.ids import is_valid_session_id
from soma.server.app import HostedService
from soma.server.auth import current_tenant, scoped_session_id, unscoped_session_id
from soma.session.records import Phase, ServedBy, SessionState, Turn, chat_messages, history_digest, history_key
from soma.storage.session_store import (
    SessionClosed,
    SessionExists,
    SessionMissing,
    SessionStore,
    TenantFull,
    TurnConflict,
)
from soma.telemetry.metrics import (
    QUOTA_REFUSALS,
    SESSIONS_CLOSED,
    SESSIONS_OPEN,
    SURROGATE_FALLBACKS,
    TEACHER_TOKENS_AVOIDED,
    TIME_PER_OUTPUT_TOKEN,
    TIME_TO_FIRST_TOKEN,
    TURN_SECONDS,
    TURNS,
    TURNS_IN_FLIGHT,
    register_sessions_by_phase,
)
from soma.telemetry.session_trace import current_ids, session_span
from soma.v1 import (
    common_pb2,
    dialogue_pb2,
    dialogue_pb2_grpc,
    surrogate_pb2,
    surrogate_pb2_grpc,
    teacher_pb2,
    teacher_pb2_grpc,
)
from soma.wire import finish_from_proto, messages_to_proto, session_to_proto, turn_record_to_proto

log = logging.getLogger("soma.dialogue")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
tracer = trace.get_tracer("soma.dialogue")

_LABEL_MAX_CHARS = 256


@dataclass
class _TurnPlan:
    """What a turn was decided to be before any model runs."""

    state: SessionState
    turn_index: int
    history: list[Turn]
    live: Any  # LiveRecord | None
    decision: RouteDecision
    phase: Phase = Phase.WARMUP
    surrogate: Any = None  # SurrogatePlan when the surrogate serves
    transcript: list[Turn] = field(default_factory=list)  # every stored turn (history: those sent)


class _SessionLocks:
    """At most one turn in flight per session within this replica."""

    def __init__(self) -> None:
        self._busy: set[str] = set()
        self._guard = threading.Lock()

    def try_acquire(self, session_id: str) -> bool:
        with self._guard:
            if session_id in self._busy:
                return False
            self._busy.add(session_id)
            return True

    def release(self, session_id: str) -> None:
        with self._guard:
            self._busy.discard(session_id)


class _BeforeFirstChunk(Exception):
    def __init__(self, err: grpc.RpcError):
        self.err = err


def _model_error(role: str, err: grpc.RpcError, address: str) -> SomaError:
    code, details = err.code(), err.details()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(f"the {role} refused the turn: {details}")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPrecondition(f"the {role} refused the turn: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"the {role} at {address} did not finish in time ({details}); the turn was not stored")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(f"the {role} at {address} is overloaded ({details}); retry the turn later")
    return Unavailable(
        f"{role} service at {address} failed ({code.name}: {details}); the turn was not stored, retry it"
    )


class DialogueServicer(dialogue_pb2_grpc.DialogueServiceServicer):
    def __init__(
        self,
        store: SessionStore,
        teacher_address: str,
        settings: DialogueSettings,
        channel_factory,
        *,
        live: LiveAdaptation | None = None,
        surrogate_address: str = "",
        on_close=None,
        on_open=None,
        quotas: QuotaSettings | None = None,
    ):
        self.store = store
        self.quotas = TenantQuotas(quotas or QuotaSettings())
        self.settings = settings
        self.teacher_address = teacher_address
        self.surrogate_address = surrogate_address
        self.live = live  # None: live adaptation off, the teacher serves every turn
        self._on_open = on_open  # cluster mode: create the SomaSession object
        self._on_close = on_close  # delete the session's adapters (embedded) or its SomaSession (cluster)
        # Keep the channels themselves: a grpc.Channel closes when garbage-collected, and stubs do not hold it.
        self._channel = channel_factory(teacher_address)
        self._teacher = teacher_pb2_grpc.TeacherServiceStub(self._channel)
        self._surrogate_channel = channel_factory(surrogate_address) if live and surrogate_address else None
        self._surrogate = (
            surrogate_pb2_grpc.SurrogateServiceStub(self._surrogate_channel) if self._surrogate_channel else None
        )
        self._locks = _SessionLocks()
        self._turn_slots = threading.BoundedSemaphore(settings.max_concurrent_turns)

    # -- validation -------------------------------------------------------------------
    @staticmethod
    def _session_id(session_id: str) -> str:
        """The id a session is stored under: the client's own, scoped to the caller's tenant
        (`scoped_session_id`), so tenants choose ids without meeting each other's."""
        if not session_id:
            raise InvalidArgument("session_id is empty")
        if not is_valid_session_id(session_id):
            raise InvalidArgument(
                "session_id must be 1-128 characters of [A-Za-z0-9._-] starting with a letter or digit"
            )
        return scoped_session_id(current_tenant(), session_id)

    def _existing(self, stored_id: str, shown: str = "") -> SessionState:
        """The caller's session: another tenant's is NOT_FOUND, as if it did not exist."""
        state = self.store.get(stored_id)
        tenant = current_tenant()
        if state is None or (tenant is not None and state.labels.get("tenant") != tenant):
            raise NotFound(f"session {shown or stored_id} does not exist; open it with OpenSession")
        return state

    @staticmethod
    def _session_proto(state: SessionState) -> dialogue_pb2.Session:
        """The session as its tenant knows it: under the id it chose."""
        session = session_to_proto(state)
        session.session_id = unscoped_session_id(current_tenant(), state.session_id)
        return session

    def _open_session(self, session_id: str) -> SessionState:
        state = self._existing(session_id)
        if state.closed:
            raise FailedPrecondition(f"session {session_id} is closed; open a new session")
        return state

    # -- RPCs -------------------------------------------------------------------------
    def OpenSession(
        self, request: dialogue_pb2.OpenSessionRequest, context: grpc.ServicerContext
    ) -> dialogue_pb2.OpenSessionResponse:
        shown = request.session_id or uuid.uuid4().hex
        session_id = self._session_id(shown)
        tenant = current_tenant()
        with _refused_as_exhausted():
            self.quotas.check_open_rate(tenant, time.monotonic())
        if len(request.system_prompt) > self.settings.max_system_prompt_chars:
            raise InvalidArgument(
                f"system_prompt has {len(request.system_prompt)} characters; "
                f"the limit is {self.settings.max_system_prompt_chars}"
            )
        if len(request.labels) > self.settings.max_labels:
            raise InvalidArgument(f"{len(request.labels)} labels; the limit is {self.settings.max_labels}")
        for key, value in request.labels.items():
            if not key or len(key) > _LABEL_MAX_CHARS or len(value) > _LABEL_MAX_CHARS:
                raise InvalidArgument(
                    f"label {key[:40]!r}: keys must be 1-{_LABEL_MAX_CHARS} characters, "
                    f"values at most {_LABEL_MAX_CHARS}"
                )
        now = time.time()
        state = SessionState(
            session_id=session_id,
            created_at=now,
            updated_at=now,
            system_prompt=request.system_prompt,
            labels=dict(request.labels),
        )
        if tenant is not None:  # the key's tenant owns the session, whatever label the request carried
            state.labels["tenant"] = tenant
        try:
            self.store.create(state, self.quotas.settings.sessions_per_tenant)
        except SessionExists:
            raise AlreadyExists(f"session {shown} already exists; pick another id") from None
        except TenantFull as full:  # counted and refused in the store's transaction: no overshoot
            with _refused_as_exhausted():
                self.quotas.check_sessions(tenant, full.open_sessions)
        SESSIONS_OPEN.inc()
        span = trace.get_current_span()
        span.set_attribute("gen_ai.conversation.id", session_id)
        if self.live:
            self.live.start(session_id, current_ids())  # the session's trace is the OpenSession span's
        if self._on_open is not None:
            try:
                self._on_open(state)
            except Exception as err:  # noqa: BLE001 - no half-open session: undo, tell the client to retry
                self.store.delete(session_id)
                log.error("session %s: creating its SomaSession failed: %s", session_id, err)
                raise Unavailable(
                    f"session {session_id} could not be registered with the cluster ({type(err).__name__}: {err}); "
                    "nothing was kept, retry OpenSession"
                ) from None
        return dialogue_pb2.OpenSessionResponse(session=self._session_proto(state))

    def Chat(
        self, request: dialogue_pb2.ChatRequest, context: grpc.ServicerContext
    ) -> Iterator[dialogue_pb2.ChatResponse]:
        started = time.perf_counter()
        session_id = self._session_id(request.session_id)
        query = request.query
        if not query.strip():
            raise InvalidArgument(
                f"query is empty; send 1 to {self.settings.max_query_chars} characters (dialogue.max_query_chars)"
            )
        if len(query) > self.settings.max_query_chars:
            raise InvalidArgument(f"query has {len(query)} characters; the limit is {self.settings.max_query_chars}")
        tenant = current_tenant()
        with _refused_as_exhausted():
            self.quotas.check_chat_rate(tenant, time.monotonic())
            self.quotas.take_turn_slot(tenant)  # the tenant's fair share first, then the replica's
        try:
            if not self._turn_slots.acquire(blocking=False):
                raise ResourceExhausted(
                    f"{self.settings.max_concurrent_turns} turns are in flight on this replica "
                    "(dialogue.max_concurrent_turns); retry shortly"
                )
            try:
                if not self._locks.try_acquire(session_id):
                    raise Aborted(f"a turn is already in progress on session {session_id}; wait for it and retry")
                try:
                    with TURNS_IN_FLIGHT.track_inprogress():
                        yield from self._chat(session_id, query, request, context, started)
                finally:
                    self._locks.release(session_id)
            finally:
                self._turn_slots.release()
        finally:
            self.quotas.release_turn_slot(tenant)

    def _history(self, session_id: str, state: SessionState) -> tuple[list[Turn], list[Turn]]:
        """Stored turns, newest kept, within dialogue.max_history_chars (the model trims further);
        refused when the session may not grow (quotas.turns_per_session, history_bytes_per_session)."""
        history = self.store.turns(session_id)
        with _refused_as_exhausted():
            self.quotas.check_session_size(
                unscoped_session_id(current_tenant(), session_id),
                state.turn_count,
                stored_bytes(state.system_prompt, history),
            )
        budget, kept = self.settings.max_history_chars, 0
        for turn in reversed(history):
            budget -= len(turn.query) + len(turn.answer)
            if budget < 0:
                break
            kept += 1
        return history, history[len(history) - kept :]

    def _chat(self, session_id, query, chat_request, context, started) -> Iterator[dialogue_pb2.ChatResponse]:
        """A turn in three steps: plan (who serves it, with what context), stream (the model's answer
        to the client), commit (store the turn, advance the live record)."""
        plan = self._plan(session_id, query, chat_request)
        trace.get_current_span().set_attribute("gen_ai.conversation.id", session_id)  # the Chat RPC's span
        with session_span(session_id, plan.live, "soma.turn", turn_index=plan.turn_index) as span:
            first_chunk: list[float] = []
            stream = self._stream(session_id, query, plan, chat_request, context)
            result = yield from _noting_first_item(stream, first_chunk)
            if result is None:
                return  # the client left
            span.set_attributes(
                {
                    "soma.served_by": plan.decision.served_by.value,
                    "soma.route_reason": plan.decision.reason,
                    "soma.phase": plan.phase.value,
                    "soma.completion_tokens": result.completion_tokens,
                    # OpenTelemetry GenAI semantic conventions
                    "gen_ai.operation.name": "chat",
                    "gen_ai.request.model": result.model,
                    "gen_ai.response.model": result.model,
                    "gen_ai.usage.input_tokens": result.prompt_tokens,
                    "gen_ai.usage.output_tokens": result.completion_tokens,
                    "gen_ai.response.finish_reasons": [finish_from_proto(result.finish_reason)],
                }
            )
            if not context.is_active():
                return  # the client cancelled: a turn it never received is not stored
            turn = self._commit(session_id, query, plan, result, started)
            self._observe_turn(plan, query, result, started, first_chunk)
            yield dialogue_pb2.ChatResponse(turn=turn_record_to_proto(turn))

    def _observe_turn(self, plan: _TurnPlan, query: str, result, started: float, first_chunk: list[float]) -> None:
        """Latency histograms of the stored turn and, for a surrogate turn, the teacher tokens it saved."""
        ended, role = time.perf_counter(), plan.decision.served_by.value.lower()
        TURN_SECONDS.labels(role).observe(ended - started)
        if first_chunk:
            TIME_TO_FIRST_TOKEN.labels(role).observe(first_chunk[0] - started)
            if result.completion_tokens > 1:
                TIME_PER_OUTPUT_TOKEN.labels(role).observe((ended - first_chunk[0]) / (result.completion_tokens - 1))
        if plan.decision.served_by is ServedBy.SURROGATE:
            # the teacher would have read the full history (the surrogate read S̃_t): estimated from the
            # surrogate's own characters per prompt token, since this process loads no tokenizer
            full = sum(len(m["content"]) for m in chat_messages(plan.state, plan.history, query))
            served = sum(len(m.content) for m in (plan.surrogate.messages or ())) if plan.surrogate else 0
            per_token = served / result.prompt_tokens if result.prompt_tokens and served else 4.0
            TEACHER_TOKENS_AVOIDED.labels("prompt").inc(round(full / per_token))
            TEACHER_TOKENS_AVOIDED.labels("completion").inc(result.completion_tokens)

    def _plan(self, session_id: str, query: str, chat_request) -> _TurnPlan:
        state = self._open_session(session_id)
        if chat_request.turn_index and chat_request.turn_index != state.turn_count + 1:
            raise Aborted(
                f"turn_index={chat_request.turn_index} but session {session_id} is at turn {state.turn_count + 1}"
                f" ({state.turn_count} stored); read it with GetSession before retrying"
            )
        transcript, history = self._history(session_id, state)
        live = self.live.record(session_id) if self.live else None
        plan = _TurnPlan(
            state, state.turn_count + 1, history, live, route_turn(state, live, live=self.live is not None)
        )
        plan.transcript = transcript
        plan.phase = live.phase if live else Phase.WARMUP
        if plan.decision.served_by is ServedBy.SURROGATE:  # one gate call: S̃_t and the drift check
            plan.surrogate = self.live.plan_surrogate_turn(session_id, live, state, history, query)
            reason = plan.surrogate.drift.rollback_reason
            if reason:
                plan.decision, plan.phase = drift_rerouted(plan.decision, reason), Phase.ROLLED_BACK
        return plan

    def _stream(self, session_id: str, query: str, plan: _TurnPlan, chat_request, context):
        """The serving model's answer, streamed; the teacher serves when the surrogate fails before
        its first chunk. Returns the GenerationResult, None when the client left."""
        if plan.decision.served_by is ServedBy.SURROGATE:
            outcome = yield from self._surrogate_turn(
                session_id, plan.state, plan.surrogate, plan.decision, chat_request, context
            )
            if not isinstance(outcome, str):
                return outcome
            plan.decision = RouteDecision(ServedBy.TEACHER, outcome)  # failed before its first chunk
        messages = chat_messages(plan.state, plan.history, query)
        return (
            yield from self._model_turn(
                "teacher", session_id, plan.turn_index, messages, chat_request, context, fallback_ok=False
            )
        )

    def _commit(self, session_id: str, query: str, plan: _TurnPlan, result, started: float) -> Turn:
        """Store the turn, then advance the live record; the stored turn carries the phase after it."""
        turn = Turn(
            turn_index=plan.turn_index,
            query=query,
            answer=result.text,
            served_by=plan.decision.served_by,
            route_reason=plan.decision.reason,
            phase=plan.phase,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            latency_ms=(time.perf_counter() - started) * 1000.0,
            model_latency_ms=result.model_latency_ms,
            finish_reason=finish_from_proto(result.finish_reason),
            dropped_messages=result.dropped_messages,
        )
        try:
            stored = self.store.append_turn(session_id, turn, None if self.live else Phase.WARMUP)
        except SessionClosed:
            raise FailedPrecondition(f"session {session_id} was closed while this turn was generated") from None
        except SessionMissing:
            raise NotFound(f"session {session_id} disappeared while this turn was generated") from None
        except TurnConflict as err:
            raise Aborted(f"session {session_id} changed while this turn was generated ({err}); retry") from None
        TURNS.labels(plan.decision.served_by.value.lower()).inc()
        self._index_transcript(session_id, plan, turn)
        if self.live:
            drift = plan.surrogate.drift if plan.surrogate else None
            after = self.live.commit_turn(
                session_id, stored.turn_count, plan.decision.served_by is ServedBy.TEACHER, drift
            )
            if after is not None and after.phase is not turn.phase:
                turn.phase = after.phase  # stored and streamed alike: the phase after this turn
                try:
                    self.store.set_turn_phase(session_id, plan.turn_index, after.phase)
                except SessionMissing:
                    pass  # closed and erased meanwhile: nothing left to correct
        return turn

    def _index_transcript(self, session_id: str, plan: _TurnPlan, turn: Turn) -> None:
        """Index the session by its transcript now (FindSession); best effort: a client that resends the
        history and is not recognised gets a new session, it loses nothing."""
        turns = [(t.query, t.answer) for t in plan.transcript] + [(turn.query, turn.answer)]
        key = history_key(current_tenant(), history_digest(plan.state.system_prompt, turns))
        try:
            self.store.set_history_key(session_id, key)
        except Exception as err:  # noqa: BLE001 - the turn is stored; only its recognition is missed
            log.warning("session %s: could not index its transcript (%s)", session_id, err)

    def FindSession(
        self, request: dialogue_pb2.FindSessionRequest, context: grpc.ServicerContext
    ) -> dialogue_pb2.FindSessionResponse:
        digest = request.history_digest
        if not _SHA256_HEX.fullmatch(digest):
            raise InvalidArgument("history_digest must be a sha256 as 64 lowercase hex digits")
        stored = self.store.session_by_history(history_key(current_tenant(), digest))
        state = self.store.get(stored) if stored else None
        if state is None or state.closed:
            raise NotFound("none of your sessions holds exactly this history; open a new one")
        return dialogue_pb2.FindSessionResponse(session=self._session_proto(state))

    def _surrogate_turn(self, session_id, state, plan, decision, chat_request, context):
        """Serve with the session's adapter and S̃_t; a failure before the first chunk (gate, adapter
        missing or corrupt, store or surrogate down) returns the reason, and the teacher serves."""
        if plan.messages is None:
            return self._fallback(session_id, "compress", plan.error)
        messages = plan.messages
        adapter = surrogate_pb2.AdapterRef(session_id=session_id, generation=decision.generation)
        try:
            return (
                yield from self._model_turn(
                    "surrogate",
                    session_id,
                    state.turn_count + 1,
                    messages,
                    chat_request,
                    context,
                    fallback_ok=True,
                    adapter=adapter,
                )
            )
        except _BeforeFirstChunk as failed:
            return self._fallback(session_id, "surrogate", failed.err)

    def _fallback(self, session_id: str, where: str, err: grpc.RpcError) -> str:
        code = err.code().name if err.code() else "UNKNOWN"
        reason = (
            f"the {'gate' if where == 'compress' else 'surrogate'} failed ({code}: {err.details()}); "
            "the teacher served this turn with the full history"
        )
        log.warning("session %s: %s", session_id, reason)
        SURROGATE_FALLBACKS.labels(code.lower()).inc()
        trace.get_current_span().add_event("soma.surrogate_fallback", {"soma.code": code, "soma.reason": reason})
        return reason

    def _model_turn(self, role, session_id, turn_index, messages, chat_request, context, *, fallback_ok, adapter=None):
        """Stream one model's answer to the client; returns its GenerationResult (None: client gone)."""
        if role == "teacher":
            stub, address = self._teacher, self.teacher_address
            request = teacher_pb2.TeacherServiceGenerateRequest(
                messages=messages_to_proto(messages),
                params=chat_request.params,
                request_id=f"{session_id}/{turn_index}",
            )
        else:
            stub, address = self._surrogate, self.surrogate_address
            request = surrogate_pb2.SurrogateServiceGenerateRequest(
                messages=messages,  # S̃_t as the gate built it: protobuf end to end
                params=chat_request.params,
                request_id=f"{session_id}/{turn_index}",
                adapter=adapter,
            )
        remaining = context.time_remaining()
        timeout = (
            self.settings.teacher_timeout_s if remaining is None else min(remaining, self.settings.teacher_timeout_s)
        )
        call = stub.Generate(request, timeout=timeout)
        context.add_callback(call.cancel)  # the client left: stop the model at once, not at the next chunk
        result, started = None, False
        served_by = common_pb2.SERVED_BY_TEACHER if role == "teacher" else common_pb2.SERVED_BY_SURROGATE
        try:
            for response in call:
                if response.HasField("chunk"):
                    started = True
                    chunk = common_pb2.TextChunk(text=response.chunk.text, served_by=served_by)
                    yield dialogue_pb2.ChatResponse(chunk=chunk)
                elif response.HasField("result"):
                    result = response.result
        except grpc.RpcError as err:
            if not context.is_active():
                return None
            if fallback_ok and not started:
                raise _BeforeFirstChunk(err) from None
            raise _model_error(role, err, address) from None
        finally:
            call.cancel()  # no-op when the stream is done; stops the model if this handler is closed early
        if result is None:
            raise Unavailable(
                f"{role} service at {address} ended the stream without a result; the turn was not stored, retry it"
            )
        return result

    def GetSession(
        self, request: dialogue_pb2.GetSessionRequest, context: grpc.ServicerContext
    ) -> dialogue_pb2.GetSessionResponse:
        state = self._existing(self._session_id(request.session_id), request.session_id)
        response = dialogue_pb2.GetSessionResponse(session=self._session_proto(state))
        if request.include_transcript:
            for turn in self.store.turns(state.session_id):
                response.transcript.add(query=turn.query, answer=turn.answer, record=turn_record_to_proto(turn))
        return response

    def CloseSession(
        self, request: dialogue_pb2.CloseSessionRequest, context: grpc.ServicerContext
    ) -> dialogue_pb2.CloseSessionResponse:
        """Close and erase: the transcript, system prompt, labels and live record go now (a turn in
        flight is refused when it tries to store), the adapters with `on_close` (embedded) or the
        operator's finalizer (cluster); afterwards the session is NOT_FOUND."""
        session_id = self._existing(self._session_id(request.session_id), request.session_id).session_id
        try:
            state = self.store.close(session_id)
        except (SessionMissing, SessionClosed):
            raise NotFound(f"session {request.session_id} does not exist; open it with OpenSession") from None
        SESSIONS_CLOSED.inc()
        if self._on_close is not None:
            try:
                self._on_close(session_id)
            except Exception as err:  # noqa: BLE001 - the session is closed; cleanup is retried by its owner
                log.warning("session %s closed, but its cleanup failed: %s", session_id, err)
        self.store.delete(session_id)
        return dialogue_pb2.CloseSessionResponse(session=self._session_proto(state))


@contextlib.contextmanager
def _refused_as_exhausted():
    """A quota's refusal is RESOURCE_EXHAUSTED with its message (the limit and when to retry)."""
    try:
        yield
    except Refusal as err:
        QUOTA_REFUSALS.labels(err.limit).inc()
        raise ResourceExhausted(str(err)) from None


def _noting_first_item(stream, first: list[float]):
    """`yield from stream`, noting when its first item came (time to first token); returns what
    the stream returns."""
    try:
        item = next(stream)
    except StopIteration as done:
        return done.value
    first.append(time.perf_counter())
    yield item
    return (yield from stream)


def hosted(
    store: SessionStore,
    teacher_address: str,
    settings: DialogueSettings,
    channel_factory,
    *,
    background=(),
    **live,
) -> HostedService:
    """`background`: threads beside the service (the embedded reconcile loop, the idle expiry),
    stopped when the server starts draining."""
    servicer = DialogueServicer(store, teacher_address, settings, channel_factory, **live)
    register_sessions_by_phase(store)

    def drain() -> None:
        for worker in background:
            worker.stop()

    return HostedService(
        drain=drain,
        name=dialogue_pb2.DESCRIPTOR.services_by_name["DialogueService"].full_name,
        register=lambda server: dialogue_pb2_grpc.add_DialogueServiceServicer_to_server(servicer, server),
    )
