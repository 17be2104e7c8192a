"""Semantic neighbourhoods N_k(u) over the surrogate's input embeddings (Definition 3.1).

N_k(u) holds the k tokens v ≠ u with the largest cos(e_v, e_u). They depend only on the base
model, so they are computed once (exactly, in blocks, on normalised embeddings) and cached.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F


def nearest_neighbours(embeddings: torch.Tensor, k: int, block: int = 4096) -> torch.Tensor:
    """[V, k] token ids of each token's k nearest other tokens by cosine, most similar first."""
    vocab = embeddings.shape[0]
    if not 0 < k < vocab:
        raise ValueError(f"k={k} must be in 1..{vocab - 1}")
    normed = F.normalize(embeddings.detach().float(), dim=-1)
    out = torch.empty(vocab, k, dtype=torch.long)
    for start in range(0, vocab, block):
        stop = min(start + block, vocab)
        sims = normed[start:stop] @ normed.T
        sims[torch.arange(stop - start), torch.arange(start, stop)] = -float("inf")  # never the token itself
        out[start:stop] = sims.topk(k, dim=-1).indices
    return out


def _fingerprint(embeddings: torch.Tensor) -> str:
    data = embeddings.detach().float().contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def cached_neighbours(embeddings: torch.Tensor, k: int, cache_dir: Path | None) -> torch.Tensor:
    """nearest_neighbours, kept on disk per (embedding matrix, k)."""
    if cache_dir is None:
        return nearest_neighbours(embeddings, k)
    path = Path(cache_dir) / f"neighbours-{_fingerprint(embeddings)}-k{k}.pt"
    if path.exists():
        return torch.load(path)
    table = nearest_neighbours(embeddings, k)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(table, tmp)
    tmp.replace(path)
    return table


def neighbourhood_weights(
    embeddings: torch.Tensor, targets: torch.Tensor, neighbours: torch.Tensor, tau: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each target y: the ids {y} ∪ N_k(y) and s_τ(v | y) over them.

    s_τ(v | y) = exp(cos(e_v, e_y)/τ) / Σ_u exp(cos(e_u, e_y)/τ), u over {y} ∪ N_k(y).
    Returns (ids [T, k+1], weights [T, k+1]); column 0 is y itself.
    """
    if tau <= 0:
        raise ValueError(f"tau={tau} must be > 0")
    ids = torch.cat([targets[:, None], neighbours[targets]], dim=1)
    normed = F.normalize(embeddings.detach().float(), dim=-1)
    cos = (normed[ids] * normed[targets][:, None, :]).sum(-1)
    return ids, torch.softmax(cos / tau, dim=-1)
