"""Gate statistics (paper §4, Stage 3): improvement X_j, its confidence bound γ_B(δ), the
acceptance decision and the locality statistic.

X_j = Gap_old(S_j) − Gap_new(S_j) on an acceptance batch B disjoint from the training
pairs; switch when mean X ≥ ε + γ_B(δ), the fidelity gate (mean Gap_new ≤ max_mean_gap) and
the locality gate (cos(query, warm centroid) ≥ min_locality) all pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from soma.algo.config import BoundKind  # noqa: E402, F401 - re-exported; config stays torch-free


def improvements(gap_old: Sequence[float], gap_new: Sequence[float]) -> list[float]:
    if len(gap_old) != len(gap_new):
        raise ValueError(f"gap_old has {len(gap_old)} values, gap_new {len(gap_new)}")
    return [o - n for o, n in zip(gap_old, gap_new, strict=True)]


X_RANGE = 2.0  # X_j = Gap_old − Gap_new lies in [−1, 1]; Thm 4.2's sqrt(2 log(1/δ)/|B|) is Hoeffding for range 2


def confidence_bound(x: Sequence[float], delta: float, kind: BoundKind, value_range: float = X_RANGE) -> float:
    """γ_B(δ) for the mean of x.

    hoeffding: sqrt(2 log(1/δ) / |B|), Theorem 4.2 as written.
    bernstein: the empirical Bernstein bound of Maurer & Pontil (2009),
        sqrt(2 V log(2/δ) / n) + 7 R log(2/δ) / (3 (n − 1)), V the sample variance and R the
        range of X; tighter than Hoeffding when X varies little, but it needs n ≥ 2.
    none: 0 (switch on the point estimate).
    """
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    n = len(x)
    if n == 0:
        raise ValueError("the acceptance batch is empty")
    if kind == "none":
        return 0.0
    if kind == "hoeffding":
        return math.sqrt(2.0 * math.log(1.0 / delta) / n)
    if kind == "bernstein":
        if n < 2:
            return math.inf
        mean = sum(x) / n
        variance = sum((v - mean) ** 2 for v in x) / (n - 1)
        log_term = math.log(2.0 / delta)
        return math.sqrt(2.0 * variance * log_term / n) + 7.0 * value_range * log_term / (3.0 * (n - 1))
    raise ValueError(f"unknown bound {kind!r}; use hoeffding, bernstein or none")


def locality(query: torch.Tensor, warm: torch.Tensor) -> float:
    """cos(query, centroid of the warm-start queries); inputs are [d] and [n, d] embeddings."""
    if warm.ndim != 2 or warm.shape[0] == 0:
        raise ValueError("locality needs at least one warm-start query embedding")
    centroid = torch.nn.functional.normalize(warm.mean(dim=0), dim=0)
    return float(torch.nn.functional.normalize(query, dim=0) @ centroid)


@dataclass(frozen=True)
class AcceptDecision:
    accepted: bool
    mean_improvement: float
    bound: float
    mean_gap_new: float
    locality: float | None
    reason: str


def accept(
    gap_old: Sequence[float],
    gap_new: Sequence[float],
    *,
    epsilon: float,
    delta: float,
    bound: BoundKind,
    max_mean_gap: float = 0.0,
    locality_value: float | None = None,
    min_locality: float = 0.0,
) -> AcceptDecision:
    """The acceptance test: improvement gate, fidelity gate and locality gate together."""
    x = improvements(gap_old, gap_new)
    mean_x = sum(x) / len(x) if x else 0.0
    gamma = confidence_bound(x, delta, bound)
    mean_new = sum(gap_new) / len(gap_new) if gap_new else 0.0
    reasons = []
    improved = mean_x >= epsilon + gamma
    reasons.append(f"improvement {mean_x:.4f} {'>=' if improved else '<'} eps {epsilon:.4f} + bound {gamma:.4f}")
    faithful = max_mean_gap <= 0.0 or mean_new <= max_mean_gap
    if max_mean_gap > 0.0:
        reasons.append(f"mean gap {mean_new:.4f} {'<=' if faithful else '>'} {max_mean_gap:.4f}")
    local = min_locality <= 0.0 or (locality_value is not None and locality_value >= min_locality)
    if min_locality > 0.0:
        shown = "n/a" if locality_value is None else f"{locality_value:.4f}"
        reasons.append(f"locality {shown} {'>=' if local else '<'} {min_locality:.4f}")
    return AcceptDecision(
        accepted=improved and faithful and local,
        mean_improvement=mean_x,
        bound=gamma,
        mean_gap_new=mean_new,
        locality=locality_value,
        reason="; ".join(reasons),
    )
