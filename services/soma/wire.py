"""Every conversion between the protobuf contracts (`soma.v1`) and soma's domain types.

One place, one vocabulary: messages, decoding settings, generation results, finish reasons,
phases and served-by values cross the wire only through these functions. Torch-free.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from soma.chat import LENGTH, STOP, GenerationOutcome, Message, SamplingParams
from soma.config import ModelSettings
from soma.errors import InvalidArgument
from soma.session.records import Phase, ServedBy, SessionState, Turn
from soma.v1 import common_pb2, dialogue_pb2

_ROLES = {
    common_pb2.ROLE_SYSTEM: "system",
    common_pb2.ROLE_USER: "user",
    common_pb2.ROLE_ASSISTANT: "assistant",
}
_ROLE_VALUES = {name: value for value, name in _ROLES.items()}
_FINISH = {STOP: common_pb2.FINISH_REASON_STOP, LENGTH: common_pb2.FINISH_REASON_LENGTH}
PHASES = {phase: common_pb2.SessionPhase.Value(f"SESSION_PHASE_{phase.value}") for phase in Phase}
SERVED_BY = {s: common_pb2.ServedBy.Value(f"SERVED_BY_{s.value}") for s in ServedBy}


# -- finish reasons -------------------------------------------------------------------------------


def finish_to_proto(reason: str) -> int:
    """STOP or LENGTH; a cancelled generation sends no result, so it has no wire value."""
    return _FINISH.get(reason, common_pb2.FINISH_REASON_UNSPECIFIED)


def finish_from_proto(value: int) -> str:
    """LENGTH only when the answer was cut; anything else ended its turn."""
    return LENGTH if value == common_pb2.FINISH_REASON_LENGTH else STOP


def finish_name(value: int) -> str:
    """A wire finish reason as a table cell: "stop", "length" or "unspecified"."""
    return {v: k for k, v in _FINISH.items()}.get(value, "unspecified")


# -- messages and decoding ------------------------------------------------------------------------


def messages_from_proto(messages: Any) -> list[Message]:
    """Validate and convert chat messages; the last one must be the user's."""
    if not messages:
        raise InvalidArgument("messages is empty: send at least one user message")
    converted = []
    for i, message in enumerate(messages):
        role = _ROLES.get(message.role)
        if role is None:
            raise InvalidArgument(f"messages[{i}].role must be SYSTEM, USER or ASSISTANT")
        converted.append({"role": role, "content": message.content})
    if converted[-1]["role"] != "user":
        raise InvalidArgument("the last message must have role USER")
    return converted


def messages_to_proto(messages: Iterable[Message]) -> list[common_pb2.Message]:
    return [common_pb2.Message(role=_ROLE_VALUES[m["role"]], content=m["content"]) for m in messages]


MIN_TEMPERATURE = 1e-3


def sampling_from_proto(params: common_pb2.GenerationParams, settings: ModelSettings) -> SamplingParams:
    """Apply server defaults to zero fields and enforce the configured limits."""
    max_new = params.max_new_tokens or settings.default_max_new_tokens
    if max_new > settings.max_new_tokens_limit:
        raise InvalidArgument(f"params.max_new_tokens={max_new} exceeds the limit of {settings.max_new_tokens_limit}")
    if not 0.0 <= params.temperature <= 2.0:
        raise InvalidArgument(f"params.temperature={params.temperature} must be within [0, 2]")
    if not 0.0 <= params.top_p <= 1.0:
        raise InvalidArgument(f"params.top_p={params.top_p} must be within [0, 1] (0 = default 1.0)")
    return SamplingParams(
        max_new_tokens=max_new,
        # below MIN_TEMPERATURE, logits / T overflow to inf and sampling breaks (soma bench fuzz found
        # 1e-45): such a temperature means "greedy", and greedy it is
        temperature=params.temperature if params.temperature >= MIN_TEMPERATURE else 0.0,
        top_p=params.top_p or 1.0,
        seed=params.seed if params.HasField("seed") else None,
        repetition_penalty=settings.repetition_penalty,  # a server setting, not a request field
    )


def result_to_proto(outcome: GenerationOutcome, model: str) -> common_pb2.GenerationResult:
    return common_pb2.GenerationResult(
        text=outcome.text,
        finish_reason=finish_to_proto(outcome.finish_reason),
        prompt_tokens=outcome.prompt_tokens,
        completion_tokens=outcome.completion_tokens,
        model_latency_ms=outcome.model_latency_ms,
        model=model,
        dropped_messages=outcome.dropped_messages,
    )


# -- sessions -------------------------------------------------------------------------------------


def _timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def session_to_proto(state: SessionState) -> dialogue_pb2.Session:
    return dialogue_pb2.Session(
        session_id=state.session_id,
        phase=PHASES[state.phase],
        created_at=_timestamp(state.created_at),
        updated_at=_timestamp(state.updated_at),
        turn_count=state.turn_count,
        teacher_turns=state.teacher_turns,
        surrogate_turns=state.surrogate_turns,
        adapter_generation=state.adapter_generation,
        system_prompt=state.system_prompt,
        labels=state.labels,
    )


def turn_record_to_proto(turn: Turn) -> common_pb2.TurnRecord:
    return common_pb2.TurnRecord(
        turn_index=turn.turn_index,
        served_by=SERVED_BY[turn.served_by],
        route_reason=turn.route_reason,
        phase=PHASES[turn.phase],
        prompt_tokens=turn.prompt_tokens,
        completion_tokens=turn.completion_tokens,
        latency_ms=turn.latency_ms,
        model_latency_ms=turn.model_latency_ms,
        finish_reason=finish_to_proto(turn.finish_reason),
        dropped_messages=turn.dropped_messages,
    )
