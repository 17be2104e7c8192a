"""Soft prompts P ∈ R^{L×d} and their verbalization V(P).

G sees P prepended to its input embeddings; the teacher F only takes text, so it sees V(P),
the nearest vocabulary token (by cosine) to each row of P, decoded to text.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def init_prompts(count: int, length: int, dim: int, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """M independent candidates [M, L, d] with rows from N(0, σ²I)."""
    if count < 1 or length < 1 or sigma <= 0:
        raise ValueError(f"need count ≥ 1, length ≥ 1 and sigma > 0, got {count}, {length}, {sigma}")
    return torch.randn(count, length, dim, generator=generator) * sigma


def verbalize_ids(prompt: torch.Tensor, embeddings: torch.Tensor, exclude: list[int] | None = None) -> torch.Tensor:
    """V(P) as token ids: per row, the token whose embedding has the largest cosine to it.

    `exclude` (control tokens such as <|im_end|>) can never be chosen: as text they would forge
    chat roles, and the teacher refuses them.
    """
    rows = F.normalize(prompt.detach().float(), dim=-1)
    table = F.normalize(embeddings.detach().float(), dim=-1)
    sims = rows @ table.T
    if exclude:
        sims[..., exclude] = -float("inf")
    return sims.argmax(-1)


def with_prompt(prompt: torch.Tensor, input_embeds: torch.Tensor) -> torch.Tensor:
    """P ⊕_emb E(tokens): [L, d] and [T, d] → [L + T, d]."""
    return torch.cat([prompt.to(input_embeds.dtype), input_embeds], dim=0)
