"""The streaming Generate handler shared by the teacher and surrogate services."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc

from soma.chat import CANCELLED, ChatBackend, ContextTooLong, Message, ReservedTokenInText, SamplingParams
from soma.errors import InvalidArgument
from soma.telemetry.metrics import GENERATED_TOKENS, PROMPT_TOKENS
from soma.v1 import common_pb2
from soma.wire import result_to_proto


def stream_generation(
    backend: ChatBackend,
    role: str,
    messages: list[Message],
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
                if item.finish_reason == CANCELLED:
                    return
                yield response_cls(result=result_to_proto(item, backend.name))
    except (ContextTooLong, ReservedTokenInText) as err:
        raise InvalidArgument(str(err)) from None
