"""How the method talks to the teacher F: a text-in, text-out interface and a per-verbalization cache.

F is a black box that only takes text (it may be a remote API with another tokenizer), so a
mined soft prompt reaches it as its verbalization V(P), placed in S_t as `mining.placement` says.
Answers are cached per (V(P), S_t): F is called again only when V(P) changes.
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


PLACEMENTS = ("system", "first_message")


def prompted_messages(
    verbalization: str, messages: Sequence[Message], placement: str = "first_message"
) -> list[Message]:
    """V(P) ⊕ S_t as chat messages.

    first_message: V(P) opens the first non-system message (the paper's code; on a turn-1 case
    that message is the user's query itself). system: V(P) is its own line at the end of the
    system message (one is made when S_t has none), so every user and assistant message is
    left exactly as it was.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    out = [dict(m) for m in messages]
    if not verbalization:
        return out
    if placement == "system":
        if out and out[0]["role"] == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{verbalization}" if out[0]["content"] else verbalization
        else:
            out.insert(0, {"role": "system", "content": verbalization})
        return out
    for m in out:
        if m["role"] != "system":
            m["content"] = f"{verbalization} {m['content']}"
            break
    return out


def _key(verbalization: str, messages: Sequence[Message], max_new_tokens: int, placement: str) -> str:
    parts = [verbalization, list(messages), max_new_tokens]
    if placement != "first_message":  # keys of the paper's placement stay what they were
        parts.append(placement)
    blob = json.dumps(parts, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class VerbalizedTeacher:
    """F under V(P) ⊕ S_t, with one cached answer per (verbalization, context, budget).

    `client` may be None where no mined pair is asked for (`mining.mined_pairs = 0`): the check is
    where F is called, so a worker with no teacher can still score hardness."""

    def __init__(self, client: TeacherClient | None):
        self.client = client
        self._cache: dict[str, Completion] = {}
        self.calls = 0  # conversations actually sent to F
        self.hits = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def answers(
        self, queries: Sequence[tuple[str, Sequence[Message]]], max_new_tokens: int, placement: str = "first_message"
    ) -> list[Completion]:
        keys = [_key(v, m, max_new_tokens, placement) for v, m in queries]
        missing: dict[str, list[Message]] = {}
        for key, (verbalization, messages) in zip(keys, queries, strict=True):
            if key in self._cache or key in missing:
                self.hits += 1
            else:
                missing[key] = prompted_messages(verbalization, messages, placement)
        if missing:
            if self.client is None:
                raise ValueError(
                    "mined pairs need the teacher: set jobs.teacher_address, or mining.mined_pairs=0 to mine none"
                )
            fresh = self.client.complete(list(missing.values()), max_new_tokens)
            for key, completion in zip(missing, fresh, strict=True):
                self._cache[key] = completion
                self.calls += 1
                self.prompt_tokens += completion.prompt_tokens
                self.completion_tokens += completion.completion_tokens
        return [self._cache[k] for k in keys]
