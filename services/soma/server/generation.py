"""The streaming Generate handler shared by the teacher and surrogate services."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import grpc

from soma.config import ModelSettings
from soma.errors import InvalidArgument
from soma.models.chat_backend import ContextTooLong, GenerationOutcome, ReservedTokenInText, SamplingParams
from soma.telemetry.metrics import GENERATED_TOKENS, PROMPT_TOKENS
from soma.v1 import common_pb2

log = logging.getLogger("soma.generation")

_ROLES = {
    common_pb2.ROLE_SYSTEM: "system",
    common_pb2.ROLE_USER: "user",
    common_pb2.ROLE_ASSISTANT: "assistant",
}
_FINISH = {
    "stop": common_pb2.FINISH_REASON_STOP,
    "length": common_pb2.FINISH_REASON_LENGTH,
}


def messages_from_proto(messages: Any) -> list[dict[str, str]]:
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


def messages_to_proto(messages: list[dict[str, str]]) -> list[common_pb2.Message]:
    by_name = {v: k for k, v in _ROLES.items()}
    return [common_pb2.Message(role=by_name[m["role"]], content=m["content"]) for m in messages]


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
        temperature=params.temperature,
        top_p=params.top_p or 1.0,
        seed=params.seed if params.HasField("seed") else None,
        repetition_penalty=settings.repetition_penalty,  # a server setting, not a request field
    )


def result_to_proto(outcome: GenerationOutcome, model: str) -> common_pb2.GenerationResult:
    return common_pb2.GenerationResult(
        text=outcome.text,
        finish_reason=_FINISH.get(outcome.finish_reason, common_pb2.FINISH_REASON_UNSPECIFIED),
        prompt_tokens=outcome.prompt_tokens,
        completion_tokens=outcome.completion_tokens,
        model_latency_ms=outcome.model_latency_ms,
        model=model,
        dropped_messages=outcome.dropped_messages,
    )


def stream_generation(
    backend: Any,
    role: str,
    messages: list[dict[str, str]],
    sampling: SamplingParams,
    context: grpc.ServicerContext,
    response_cls: type,
) -> Iterator[Any]:
    """Run the backend and turn its chunks and outcome into response messages."""
    try:
        for item in backend.stream(messages, sampling, is_cancelled=lambda: not context.is_active()):
            if isinstance(item, str):
                if item:
                    yield response_cls(chunk=common_pb2.TextChunk(text=item))
            else:
                PROMPT_TOKENS.labels(role).inc(item.prompt_tokens)
                GENERATED_TOKENS.labels(role).inc(item.completion_tokens)
                if item.finish_reason == "cancelled":
                    return
                yield response_cls(result=result_to_proto(item, backend.name))
    except (ContextTooLong, ReservedTokenInText) as err:
        raise InvalidArgument(str(err)) from None
