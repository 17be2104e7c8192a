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


def extractive_summary(texts: Sequence[str], encode: Callable[[list[str]], torch.Tensor], budget_chars: int) -> str:
    """The most central sentences of `texts`, original order, at most budget_chars in total."""
    sentences = [s for text in texts for s in split_sentences(text)]
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


def compressed_messages(
    history: Sequence[tuple[str, str]],
    query: str,
    *,
    recent_turns: int,
    summary_chars: int,
    encode: Callable[[list[str]], torch.Tensor],
    system_prompt: str = "",
    summarize: Callable[[Sequence[tuple[str, str]], int], str] | None = None,
) -> list[dict[str, str]]:
    """S̃_t as chat messages: system (with the summary of older turns), last K turns, the query.

    The summary is extractive unless `summarize(older_turns, budget)` is given (e.g. teacher_summary).
    """
    older, recent = (
        history[: max(0, len(history) - recent_turns)],
        history[len(history) - recent_turns :] if recent_turns else [],
    )
    if not older:
        summary = ""
    elif summarize is not None:
        summary = summarize(older, summary_chars)
    else:
        summary = extractive_summary([f"{q} {a}" for q, a in older], encode, summary_chars)
    system = system_prompt
    if summary:
        system = (system + "\n\n" if system else "") + f"Summary of the earlier conversation: {summary}"
    messages = [{"role": "system", "content": system}] if system else []
    for q, a in recent:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    messages.append({"role": "user", "content": query})
    return messages
