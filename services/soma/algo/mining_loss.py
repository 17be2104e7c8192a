"""The soft-prompt mining objective (paper Eq. 1-3), as functions of G's next-token logits.

For one warm-start turn t with teacher tokens y = tok_G(a_t^F) (T positions):
- ℓ_i = Σ_{v ∈ {y_i} ∪ N_k(y_i)} s_τ(v | y_i) · (−log(1 − Π_i[v]))            (Eq. 1, per position)
- w_i = 1 + λ · clip(cos(ē_i, e_{y_i}), 0, 1), ē_i = Σ_{v ∈ top-m(Π_i)} Π_i[v] e_v   (Eq. 2 weight)
- H_tail = mean entropy of Π_i over the K answer positions next to the context   (anti-degeneration)
- J = mean_t [ mean_i w_i ℓ_i − β H_tail ] + λ_P ‖P‖²_F                          (Eq. 3)

Minimising J pushes G away from F's tokens and their semantic neighbours: the prompts found
expose where G and F disagree. The weight w depends on P (it is not detached), as in Eq. 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

_EPS = 1e-6


def unlikelihood(log_probs: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-position ℓ_i from log Π [T, V] and the neighbourhood ids/weights [T, k+1]."""
    probs = log_probs.gather(-1, ids).exp().clamp(max=1.0 - _EPS)
    return (weights * -torch.log1p(-probs)).sum(-1)


def expectation_weight(
    log_probs: torch.Tensor, embeddings: torch.Tensor, targets: torch.Tensor, top_m: int, lam: float
) -> torch.Tensor:
    """w_i = 1 + λ·clip(cos(ē_i, e_{y_i}), 0, 1) with ē_i over the top-m of Π_i (scale-free, so unrenormalised)."""
    top_logp, top_ids = log_probs.topk(min(top_m, log_probs.shape[-1]), dim=-1)
    expected = (top_logp.exp()[..., None] * embeddings[top_ids]).sum(-2)
    cos = F.cosine_similarity(expected, embeddings[targets], dim=-1)
    return 1.0 + lam * cos.clamp(0.0, 1.0)


def tail_entropy(log_probs: torch.Tensor, tail: int) -> torch.Tensor:
    """Mean entropy of Π_i over the first `tail` answer positions (the prompt-context boundary)."""
    window = log_probs[: max(1, min(tail, log_probs.shape[0]))]
    return -(window.exp() * window).sum(-1).mean()


@dataclass(frozen=True)
class TurnTerms:
    """The parts of J for one turn, kept for hardness scores and logging."""

    sem: torch.Tensor  # mean_i ℓ_i (Eq. 1)
    sem_exp: torch.Tensor  # mean_i w_i ℓ_i (Eq. 2)
    entropy: torch.Tensor  # H_tail


def turn_terms(
    logits: torch.Tensor,
    targets: torch.Tensor,
    embeddings: torch.Tensor,
    neighbour_ids: torch.Tensor,
    neighbour_weights: torch.Tensor,
    *,
    top_m: int,
    lam: float,
    tail: int,
    use_expectation_weight: bool = True,
) -> TurnTerms:
    """Terms of one turn from G's logits at the T answer positions ([T, V], predicting targets [T])."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    ell = unlikelihood(log_probs, neighbour_ids, neighbour_weights)
    if use_expectation_weight:
        w = expectation_weight(log_probs, embeddings.float(), targets, top_m, lam)
    else:
        w = torch.ones_like(ell)
    return TurnTerms(sem=ell.mean(), sem_exp=(w * ell).mean(), entropy=tail_entropy(log_probs, tail))


def objective(terms: list[TurnTerms], prompt: torch.Tensor, *, beta: float, lambda_p: float) -> torch.Tensor:
    """J(P) = mean_t [L_sem_exp − β H_tail] + λ_P ‖P‖²_F   (Eq. 3)."""
    if not terms:
        raise ValueError("the mining objective needs at least one warm-start turn")
    per_turn = torch.stack([t.sem_exp - beta * t.entropy for t in terms])
    return per_turn.mean() + lambda_p * prompt.pow(2).sum()
