"""Chat types every layer shares: messages, decoding settings, a generation's outcome, the backend
protocol and the one finish-reason vocabulary.

Torch-free on purpose: the dialogue service, the operator and the client use these types without
loading a model library; the backends (transformers, vLLM, an OpenAI-compatible API) implement
`ChatBackend` on top of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

Message = dict[str, str]

# The finish reasons of a generation, as every backend, record and benchmark spells them.
STOP = "stop"  # the model ended its turn (or hit a stop sequence)
LENGTH = "length"  # cut by max_new_tokens
CANCELLED = "cancelled"  # the caller went away or the request was aborted
FINISH_REASONS = (STOP, LENGTH, CANCELLED)


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    # > 1 discourages tokens already in the prompt or the answer (CTRL-style, as transformers and vLLM
    # apply it); a small teacher answering greedily otherwise repeats its earlier answers turn after turn
    repetition_penalty: float = 1.0


@dataclass
class GenerationOutcome:
    text: str
    finish_reason: str  # one of FINISH_REASONS
    prompt_tokens: int
    completion_tokens: int
    model_latency_ms: float
    dropped_messages: int
    mean_logprob: float | None = None  # only from generate_batch(with_logprobs=True)


class ReservedTokenInText(ValueError):
    """A message contains a control token of the model's tokenizer (e.g. <|im_start|>)."""


class ContextTooLong(ValueError):
    """Even the last user message alone (plus system prompt) does not fit the context window."""

    def __init__(self, needed: int, max_new_tokens: int, limit: int):
        self.needed, self.max_new_tokens, self.limit = needed, max_new_tokens, limit
        super().__init__(
            f"the last user message needs {needed} prompt tokens + {max_new_tokens} new tokens "
            f"= {needed + max_new_tokens}, but the context limit is {limit} tokens"
        )


class ChatBackend(Protocol):
    """What the teacher and surrogate services need of a model: a name and a cancellable stream of
    text chunks that ends with one GenerationOutcome."""

    name: str

    def stream(
        self, messages: Sequence[Message], params: SamplingParams, is_cancelled: Callable[[], bool] = ...
    ) -> Iterator[str | GenerationOutcome]: ...

    def generate(self, messages: Sequence[Message], params: SamplingParams) -> GenerationOutcome: ...


def outcome_of(stream: Iterator[str | GenerationOutcome]) -> GenerationOutcome:
    """Drain a backend's stream (text chunks, then one GenerationOutcome) and return the outcome:
    `generate` for backends whose only way to generate is streaming."""
    outcome = None
    for item in stream:
        if isinstance(item, GenerationOutcome):
            outcome = item
    if outcome is None:
        raise RuntimeError("the stream ended without a GenerationOutcome")
    return outcome
