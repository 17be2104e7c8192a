"""Gate statistics against hand-computed values."""

import math

import pytest
import torch

from soma.algo import gate_stats


def test_hoeffding_matches_theorem_4_2():
    x = [0.1] * 12
    assert gate_stats.confidence_bound(x, 0.05, "hoeffding") == pytest.approx(math.sqrt(2 * math.log(20) / 12))


def test_bernstein_by_hand():
    x = [0.1, 0.3, 0.2, 0.4]
    mean = 0.25
    var = sum((v - mean) ** 2 for v in x) / 3
    lt = math.log(2 / 0.1)
    expected = math.sqrt(2 * var * lt / 4) + 7 * 2.0 * lt / (3 * 3)  # R = 2: X = Gap_old − Gap_new ∈ [−1, 1]
    assert gate_stats.confidence_bound(x, 0.1, "bernstein") == pytest.approx(expected)
    assert gate_stats.confidence_bound([0.2], 0.1, "bernstein") == math.inf


def test_none_bound_and_bad_input():
    assert gate_stats.confidence_bound([0.3], 0.1, "none") == 0.0
    with pytest.raises(ValueError):
        gate_stats.confidence_bound([], 0.1, "hoeffding")
    with pytest.raises(ValueError):
        gate_stats.confidence_bound([0.1], 1.5, "hoeffding")


def test_accept_requires_every_gate():
    old, new = [0.8] * 20, [0.1] * 20  # X = 0.7 each; bound sqrt(2 ln 10 / 20) = 0.48
    ok = gate_stats.accept(old, new, epsilon=0.05, delta=0.1, bound="hoeffding")
    assert ok.accepted and ok.mean_improvement == pytest.approx(0.7)
    assert not gate_stats.accept(old, new, epsilon=0.05, delta=0.1, bound="hoeffding", max_mean_gap=0.05).accepted
    far = gate_stats.accept(old, new, epsilon=0.05, delta=0.1, bound="none", locality_value=0.2, min_locality=0.5)
    assert not far.accepted and "locality" in far.reason
    small = gate_stats.accept([0.6] * 3, [0.4] * 3, epsilon=0.05, delta=0.1, bound="hoeffding")
    assert not small.accepted  # 0.2 < 0.05 + sqrt(2 ln 10 / 3)


def test_locality_is_cosine_to_centroid():
    warm = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert gate_stats.locality(torch.tensor([1.0, 1.0]), warm) == pytest.approx(1.0)
    assert gate_stats.locality(torch.tensor([1.0, -1.0]), warm) == pytest.approx(0.0, abs=1e-6)
