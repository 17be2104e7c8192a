"""Localized LoRA fine-tuning objective (paper Eq. 4) and its training examples.

L_FT = (1/|H|) Σ_{(S_t, a_t^F) ∈ H} ω_t · NLL(a_t^F | G(S_t)), ω_t ∝ r_t.

Each example is G's chat-templated context S_t followed by F's answer and G's end-of-turn
token: the answer tokens and the EOS are the targets (the reference code trained without the
EOS, so its adapted surrogate did not learn where to stop); the context is masked out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE = -100


@dataclass(frozen=True)
class TrainingExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE on the context, token ids on the answer and its EOS
    weight: float


def build_example(
    context_ids: Sequence[int],
    answer_ids: Sequence[int],
    eos_id: int,
    weight: float,
    max_tokens: int | None = None,
    *,
    ended: bool = True,
) -> TrainingExample:
    """Context then answer (+ EOS when F ended its answer); when too long, the oldest context goes first.

    An answer F did not finish (cut by its token budget) gets no EOS target: teaching G to stop
    there would teach it to stop mid-sentence.
    """
    answer = [*answer_ids, eos_id] if ended else list(answer_ids)
    context = list(context_ids)
    if max_tokens is not None and len(context) + len(answer) > max_tokens:
        keep = max(0, max_tokens - len(answer))
        context = context[len(context) - keep :] if keep else []
        answer = answer[: max_tokens - len(context)]
    return TrainingExample(context + answer, [IGNORE] * len(context) + answer, weight)


def normalised_weights(hardness: Sequence[float], floor: float = 1e-3) -> list[float]:
    """ω_t ∝ r_t, scaled to mean 1 so the learning rate keeps its meaning; never zero."""
    clipped = [max(float(r), floor) for r in hardness]
    mean = sum(clipped) / len(clipped)
    return [r / mean for r in clipped]


def collate(examples: Sequence[TrainingExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch tensors: input_ids, attention_mask, labels, weights."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    weights = torch.tensor([e.weight for e in examples], dtype=torch.float)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "weights": weights}


def weighted_nll(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(1/B) Σ_b ω_b · mean token NLL of example b's targets (logits [B, T, V], labels [B, T])."""
    shifted_logits = logits[:, :-1].float()
    shifted_labels = labels[:, 1:]
    token_nll = F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.shape[-1]),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE,
        reduction="none",
    ).view(shifted_labels.shape)
    counts = (shifted_labels != IGNORE).sum(-1).clamp(min=1)
    per_example = token_nll.sum(-1) / counts
    return (weights * per_example).mean()
