"""An OpenAI chat request as a soma turn: pure logic, no I/O.

OpenAI-style clients resend the whole conversation on every call; soma keeps the conversation
itself. A request's `messages` are split into the system prompt, the prior (user, assistant)
turns and the new user query; the prior turns either match the session's stored transcript (or
are left out), or the request contradicts the session. Without a session id, a conversation is
recognised by the digest of its prior turns (soma.session.records.history_digest), which the
dialogue service looks up among the caller's stored transcripts, so an app that resends the whole
history keeps one session.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MAX_MESSAGES = 2048
UNSUPPORTED = {
    "tools": "tools",
    "tool_choice": "tools",
    "functions": "function calling",
    "function_call": "function calling",
    "logprobs": "logprobs",
    "top_logprobs": "logprobs",
    "response_format": "response_format",
    "audio": "audio output",
    "modalities": "other modalities than text",
    "prediction": "predicted outputs",
}


class BadRequest(ValueError):
    """The request cannot become a soma turn; `param` names the offending field (OpenAI's error body)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


@dataclass(frozen=True)
class Conversation:
    system: str
    prior: tuple[tuple[str, str], ...]  # (user, assistant) turns before the new query
    query: str


def _text(content: Any, where: str) -> str:
    """A message's content as text: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        texts = []
        for part in content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise BadRequest(f"{where}: only text content parts are supported", param=where)
            texts.append(part["text"])
        return "".join(texts)
    raise BadRequest(f"{where}: content must be a string or a list of text parts", param=where)


def parse_messages(messages: Any, max_chars: int) -> Conversation:
    """Split `messages` into system prompt, prior turns and the new query. System (or developer)
    messages may come only first; then user and assistant alternate, ending with a user message."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list", param="messages")
    if len(messages) > MAX_MESSAGES:
        raise BadRequest(f"at most {MAX_MESSAGES} messages", param="messages")
    system_parts: list[str] = []
    turns: list[tuple[str, str]] = []
    pending_user: str | None = None
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{where} must be an object", param=where)
        role = message.get("role")
        text = _text(message.get("content"), f"{where}.content")
        if len(text) > max_chars:
            raise BadRequest(
                f"{where}.content has {len(text)} characters; the limit is {max_chars}",
                param=f"{where}.content",
                code="string_above_max_length",
            )
        if role in ("system", "developer"):
            if turns or pending_user is not None:
                raise BadRequest(f"{where}: system messages must come before the conversation", param=where)
            system_parts.append(text)
        elif role == "user":
            if pending_user is not None:
                raise BadRequest(
                    f"{where}: two user messages in a row; soma needs user and assistant to alternate", where
                )
            pending_user = text
        elif role == "assistant":
            if pending_user is None:
                raise BadRequest(f"{where}: an assistant message must answer a user message", param=where)
            turns.append((pending_user, text))
            pending_user = None
        else:
            raise BadRequest(f"{where}.role {role!r} is not supported (system, developer, user, assistant)", where)
    if pending_user is None:
        raise BadRequest("the last message must be the user's", param="messages")
    if not pending_user.strip():
        raise BadRequest("the last user message is empty", param="messages")
    return Conversation("\n\n".join(system_parts), tuple(turns), pending_user)


def check_supported(body: dict) -> None:
    """OpenAI fields soma does not serve are refused, not silently ignored."""
    for field, what in UNSUPPORTED.items():
        if body.get(field) not in (None, [], False):
            raise BadRequest(f"{what} is not supported by soma", param=field, code="unsupported_parameter")
    if body.get("n") not in (None, 1):
        raise BadRequest("n must be 1: soma serves one answer per turn", param="n", code="unsupported_parameter")
    stop = body.get("stop")
    if stop not in (None, [], ""):
        raise BadRequest("stop sequences are not supported by soma", param="stop", code="unsupported_parameter")


def contradiction(prior: Sequence[tuple[str, str]], stored: Sequence[tuple[str, str]]) -> str | None:
    """Why a request's resent history contradicts the stored transcript, or None. Sending no history
    (only the new message) never contradicts; sending some must send exactly the stored turns."""
    if not prior:
        return None
    if len(prior) != len(stored):
        return f"the request resends {len(prior)} turns; the session has {len(stored)}"
    for i, (sent, kept) in enumerate(zip(prior, stored, strict=True), start=1):
        if sent[0] != kept[0]:
            return f"turn {i}: the user message differs from the stored one"
        if sent[1] != kept[1]:
            return f"turn {i}: the assistant message differs from the answer soma gave"
    return None
