"""The data a session is made of: its state and its turns."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

SESSION_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


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


def is_valid_session_id(session_id: str) -> bool:
    """Ids are safe as file names and object keys: no path characters, bounded length."""
    return bool(SESSION_ID_PATTERN.fullmatch(session_id))


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
