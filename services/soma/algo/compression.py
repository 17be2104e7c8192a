"""The compressed prefix S̃_t: a fixed-budget extractive summary of older turns plus the
last K turns verbatim. After the switch the surrogate reads S̃_t instead of the full history.

The extractive summary keeps the sentences of older turns that are most central to the
dialogue (highest mean similarity to the others, under any sentence embedding), in their
original order, until the character budget is spent.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s and s.strip()]


MAX_SUMMARY_SENTENCES = 1024  # the newest ones beyond it are kept: cost is one encode and an N×N matrix


def extractive_summary(texts: Sequence[str], encode: Callable[[list[str]], torch.Tensor], budget_chars: int) -> str:
    """The most central sentences of `texts`, original order, at most budget_chars in total (among
    the newest MAX_SUMMARY_SENTENCES sentences, so a request of a million tiny sentences stays cheap)."""
    sentences = [s for text in texts for s in split_sentences(text)][-MAX_SUMMARY_SENTENCES:]
    if not sentences or budget_chars <= 0:
        return ""
    emb = torch.nn.functional.normalize(encode(sentences).float(), dim=-1)
    centrality = (emb @ emb.T).mean(-1)
    chosen, used = [], 0
    for index in centrality.argsort(descending=True).tolist():
        cost = len(sentences[index]) + 1
        if used + cost <= budget_chars:
            chosen.append(index)
            used += cost
    return " ".join(sentences[i] for i in sorted(chosen))


SUMMARY_INSTRUCTION = (
    "Summarize the conversation below in at most {chars} characters. Keep names, numbers, constraints and "
    "decisions the user may refer to later. Answer with the summary only.\n\n{transcript}"
)


def teacher_summary(
    history: Sequence[tuple[str, str]], complete: Callable[[list[dict[str, str]]], str], budget_chars: int
) -> str:
    """A summary written by the teacher (one extra F call per refresh), cut to the budget at a word."""
    if not history or budget_chars <= 0:
        return ""
    transcript = "\n".join(f"User: {q}\nAssistant: {a}" for q, a in history)
    text = " ".join(
        complete(
            [{"role": "user", "content": SUMMARY_INSTRUCTION.format(chars=budget_chars, transcript=transcript)}]
        ).split()
    )
    if len(text) <= budget_chars:
        return text
    cut = text[:budget_chars]
    return cut[: cut.rfind(" ")] if " " in cut else cut


SUMMARY_LEAD = "Summary of the earlier conversation:"


def compressed_messages(
    history: Sequence[tuple[str, str]],
    query: str,
    *,
    recent_turns: int,
    summary_chars: int,
    encode: Callable[[list[str]], torch.Tensor],
    system_prompt: str = "",
    summarize: Callable[[Sequence[tuple[str, str]], int], str] | None = None,
    place: str = "first_user",
    max_summarized_turns: int = 64,
) -> list[dict[str, str]]:
    """S̃_t as chat messages: the session's system prompt, the summary of older turns, the last K
    turns verbatim (roles kept) and the query.

    The summary reads at most `max_summarized_turns` older turns (the most recent ones), so S̃_t
    costs the same at turn 10 and turn 10,000. `place` says where it goes: `first_user` opens the
    first kept user message with a bracketed note and leaves the system role to the session's own
    prompt, so a surrogate whose chat template adds a default system prompt keeps it; `system`
    appends it to (or makes it) the system message, replacing such a default. The summary is
    extractive unless `summarize(older_turns, budget)` is given (e.g. teacher_summary).
    """
    if place not in ("first_user", "system"):
        raise ValueError(f"place must be first_user or system, got {place!r}")
    cut = max(0, len(history) - recent_turns)
    older, recent = history[:cut], history[cut:]
    older = older[-max_summarized_turns:] if max_summarized_turns > 0 else []
    if not older:
        summary = ""
    elif summarize is not None:
        summary = summarize(older, summary_chars)
    else:
        summary = extractive_summary([f"{q} {a}" for q, a in older], encode, summary_chars)
    system = system_prompt
    note = f"[{SUMMARY_LEAD} {summary}]" if summary else ""
    if note and place == "system":
        system = (system + "\n\n" if system else "") + f"{SUMMARY_LEAD} {summary}"
        note = ""
    messages = [{"role": "system", "content": system}] if system else []
    for q, a in recent:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    messages.append({"role": "user", "content": query})
    if note:
        first = next(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[first] = {"role": "user", "content": f"{note}\n\n{messages[first]['content']}"}
    return messages
