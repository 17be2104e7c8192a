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


def compressed_messages(
    history: Sequence[tuple[str, str]],
    query: str,
    *,
    recent_turns: int,
    summary_chars: int,
    encode: Callable[[list[str]], torch.Tensor],
    system_prompt: str = "",
) -> list[dict[str, str]]:
    """S̃_t as chat messages: system (with the summary of older turns), last K turns, the query."""
    older, recent = (
        history[: max(0, len(history) - recent_turns)],
        history[len(history) - recent_turns :] if recent_turns else [],
    )
    summary = extractive_summary([f"{q} {a}" for q, a in older], encode, summary_chars) if older else ""
    system = system_prompt
    if summary:
        system = (system + "\n\n" if system else "") + f"Summary of the earlier conversation: {summary}"
    messages = [{"role": "system", "content": system}] if system else []
    for q, a in recent:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    messages.append({"role": "user", "content": query})
    return messages
