"""How the method talks to the teacher F: a text-in, text-out interface and a per-verbalization cache.

F is a black box that only takes text (it may be a remote API with another tokenizer), so a
mined soft prompt reaches it as its verbalization V(P), prepended to the first non-system
message of S_t. Answers are cached per (V(P), S_t): F is called again only when V(P) changes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

Message = dict[str, str]


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"  # "stop" | "length"


class TeacherClient(Protocol):
    def complete(self, conversations: Sequence[Sequence[Message]], max_new_tokens: int) -> list[Completion]:
        """Greedy answers, one per conversation (implementations may batch)."""
        ...


def prompted_messages(verbalization: str, messages: Sequence[Message]) -> list[Message]:
    """V(P) ⊕ S_t as chat messages: V(P) opens the first non-system message."""
    out = [dict(m) for m in messages]
    for m in out:
        if m["role"] != "system":
            m["content"] = f"{verbalization} {m['content']}" if verbalization else m["content"]
            break
    return out


def _key(verbalization: str, messages: Sequence[Message], max_new_tokens: int) -> str:
    blob = json.dumps([verbalization, list(messages), max_new_tokens], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class VerbalizedTeacher:
    """F under V(P) ⊕ S_t, with one cached answer per (verbalization, context, budget)."""

    def __init__(self, client: TeacherClient):
        self.client = client
        self._cache: dict[str, Completion] = {}
        self.calls = 0  # conversations actually sent to F
        self.hits = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def answers(self, queries: Sequence[tuple[str, Sequence[Message]]], max_new_tokens: int) -> list[Completion]:
        keys = [_key(v, m, max_new_tokens) for v, m in queries]
        missing: dict[str, list[Message]] = {}
        for key, (verbalization, messages) in zip(keys, queries, strict=True):
            if key in self._cache or key in missing:
                self.hits += 1
            else:
                missing[key] = prompted_messages(verbalization, messages)
        if missing:
            fresh = self.client.complete(list(missing.values()), max_new_tokens)
            for key, completion in zip(missing, fresh, strict=True):
                self._cache[key] = completion
                self.calls += 1
                self.prompt_tokens += completion.prompt_tokens
                self.completion_tokens += completion.completion_tokens
        return [self._cache[k] for k in keys]
