"""The data a session is made of: its state and its turns."""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field


class Phase(enum.Enum):
    """Session phases; names match soma.v1.SessionPhase without its prefix."""

    WARMUP = "WARMUP"
    ADAPTING = "ADAPTING"
    GATING = "GATING"
    SURROGATE = "SURROGATE"
    ROLLED_BACK = "ROLLED_BACK"
    CLOSED = "CLOSED"
    FAILED = "FAILED"


class ServedBy(enum.Enum):
    TEACHER = "TEACHER"
    SURROGATE = "SURROGATE"


@dataclass
class SessionState:
    session_id: str
    created_at: float
    updated_at: float
    phase: Phase = Phase.WARMUP
    system_prompt: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    turn_count: int = 0
    teacher_turns: int = 0
    surrogate_turns: int = 0
    adapter_generation: int = 0

    @property
    def closed(self) -> bool:
        return self.phase is Phase.CLOSED


@dataclass
class Turn:
    """One completed turn: what the user asked, the answer, and how it was served."""

    turn_index: int
    query: str
    answer: str
    served_by: ServedBy
    route_reason: str
    phase: Phase
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    model_latency_ms: float
    finish_reason: str
    dropped_messages: int = 0


def chat_messages(state: SessionState, history: list[Turn], query: str) -> list[dict[str, str]]:
    """The teacher's full-history input S_t = D_{t-1} ⊕ q_t as chat messages."""
    messages: list[dict[str, str]] = []
    if state.system_prompt:
        messages.append({"role": "system", "content": state.system_prompt})
    for turn in history:
        messages.append({"role": "user", "content": turn.query})
        messages.append({"role": "assistant", "content": turn.answer})
    messages.append({"role": "user", "content": query})
    return messages


def history_digest(system: str, turns: Iterable[tuple[str, str]]) -> str:
    """A conversation's fingerprint: sha256 over the system prompt and every (user, assistant) turn,
    each part length-prefixed so no two conversations share one. The OpenAI door computes it over
    the history a request resends, the dialogue service over the stored transcript."""
    h = hashlib.sha256()
    for part in (system, *(text for turn in turns for text in turn)):
        data = part.encode()
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def history_key(tenant: str | None, digest: str) -> str:
    """What the session store indexes a transcript by: its digest within one tenant."""
    return hashlib.sha256(f"{tenant or ''}\0{digest}".encode()).hexdigest()


def turn_to_dict(turn: Turn) -> dict:
    """A turn as JSON-able data (how the session stores keep it)."""
    return {
        "turn_index": turn.turn_index,
        "query": turn.query,
        "answer": turn.answer,
        "served_by": turn.served_by.value,
        "route_reason": turn.route_reason,
        "phase": turn.phase.value,
        "prompt_tokens": turn.prompt_tokens,
        "completion_tokens": turn.completion_tokens,
        "latency_ms": turn.latency_ms,
        "model_latency_ms": turn.model_latency_ms,
        "finish_reason": turn.finish_reason,
        "dropped_messages": turn.dropped_messages,
    }


def turn_from_dict(r: dict) -> Turn:
    return Turn(
        turn_index=r["turn_index"],
        query=r["query"],
        answer=r["answer"],
        served_by=ServedBy(r["served_by"]),
        route_reason=r["route_reason"],
        phase=Phase(r["phase"]),
        prompt_tokens=r["prompt_tokens"],
        completion_tokens=r["completion_tokens"],
        latency_ms=r["latency_ms"],
        model_latency_ms=r["model_latency_ms"],
        finish_reason=r["finish_reason"],
        dropped_messages=r.get("dropped_messages", 0),
    )
