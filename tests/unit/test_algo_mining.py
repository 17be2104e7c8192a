"""The mining objective's terms against hand-computed values, on tiny tensors."""

import math

import pytest
import torch

from soma.algo import mining_loss, neighbourhood, soft_prompt
from soma.algo.drift import DriftMonitor, TurnCheck

# Four tokens in 2-D: 0 and 1 point the same way, 2 is orthogonal, 3 is opposite to 0.
EMB = torch.tensor([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [-1.0, 0.0]])


def test_neighbourhood_excludes_the_token_itself():
    table = neighbourhood.nearest_neighbours(EMB, k=2)
    for token in range(4):
        assert token not in table[token].tolist()
    assert table[0].tolist() == [1, 2]  # cos 0.9988 then 0
    assert table[3].tolist() == [2, 1]  # cos 0, then -0.9988 (token 0 at -1 is last)


def test_neighbourhood_cache_roundtrip(tmp_path):
    first = neighbourhood.cached_neighbours(EMB, 2, tmp_path)
    assert list(tmp_path.glob("neighbours-*-k2.pt"))
    assert torch.equal(first, neighbourhood.cached_neighbours(EMB, 2, tmp_path))


def test_s_tau_is_softmax_of_cosines_over_token_and_neighbours():
    table = neighbourhood.nearest_neighbours(EMB, k=2)
    ids, weights = neighbourhood.neighbourhood_weights(EMB, torch.tensor([0]), table, tau=0.5)
    assert ids.tolist() == [[0, 1, 2]]
    cos01 = 2.0 / math.hypot(2.0, 0.1)
    logits = torch.tensor([1.0, cos01, 0.0]) / 0.5
    assert torch.allclose(weights[0], torch.softmax(logits, 0))


def test_unlikelihood_by_hand():
    probs = torch.tensor([[0.5, 0.25, 0.125, 0.125]])
    ids = torch.tensor([[0, 1, 2]])
    weights = torch.tensor([[0.5, 0.3, 0.2]])
    expected = 0.5 * -math.log(0.5) + 0.3 * -math.log(0.75) + 0.2 * -math.log(0.875)
    got = mining_loss.unlikelihood(probs.log(), ids, weights)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_expectation_weight_by_hand():
    probs = torch.tensor([[0.7, 0.1, 0.1, 0.1]])
    # top-2: tokens 0 (0.7) and 1 or 2 or 3 (0.1, ties resolved by topk) -> check with m = 4 (dense)
    e_bar = 0.7 * EMB[0] + 0.1 * EMB[1] + 0.1 * EMB[2] + 0.1 * EMB[3]
    cos = torch.nn.functional.cosine_similarity(e_bar, EMB[0], dim=0).item()
    w = mining_loss.expectation_weight(probs.log(), EMB, torch.tensor([0]), top_m=4, lam=1.5)
    assert w.item() == pytest.approx(1 + 1.5 * min(max(cos, 0), 1), rel=1e-5)
    # pointing away from the target clips to 0: w = 1
    away = mining_loss.expectation_weight(
        torch.tensor([[0.0, 0.0, 0.0, 1.0]]).clamp(min=1e-9).log(), EMB, torch.tensor([0]), top_m=1, lam=1.5
    )
    assert away.item() == pytest.approx(1.0)


def test_tail_entropy_by_hand():
    uniform = torch.full((3, 4), 0.25).log()
    assert mining_loss.tail_entropy(uniform, tail=2).item() == pytest.approx(math.log(4), rel=1e-5)
    peaked = torch.tensor([[1.0, 1e-9, 1e-9, 1e-9]]).log()
    assert mining_loss.tail_entropy(peaked, tail=5).item() == pytest.approx(0.0, abs=1e-6)


def test_objective_combines_terms():
    terms = [
        mining_loss.TurnTerms(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(0.5)),
        mining_loss.TurnTerms(torch.tensor(1.0), torch.tensor(4.0), torch.tensor(1.5)),
    ]
    prompt = torch.ones(2, 3)
    j = mining_loss.objective(terms, prompt, beta=0.1, lambda_p=0.01)
    assert j.item() == pytest.approx(((2 - 0.05) + (4 - 0.15)) / 2 + 0.01 * 6)


def test_gradients_reach_only_the_prompt():
    torch.manual_seed(0)
    vocab, dim = 12, 4
    embed = torch.nn.Embedding(vocab, dim)
    head = torch.nn.Linear(dim, vocab)
    for p in [*embed.parameters(), *head.parameters()]:
        p.requires_grad_(False)
    prompt = torch.randn(3, dim, requires_grad=True)
    targets = torch.tensor([1, 5, 7])
    hidden = soft_prompt.with_prompt(prompt, embed(torch.tensor([2, 3])))
    logits = head(hidden.cumsum(0))[-3:]  # a causal toy "model"
    table = neighbourhood.nearest_neighbours(embed.weight, k=3)
    ids, weights = neighbourhood.neighbourhood_weights(embed.weight, targets, table, tau=0.8)
    terms = mining_loss.turn_terms(logits, targets, embed.weight, ids, weights, top_m=5, lam=1.0, tail=2)
    mining_loss.objective([terms], prompt, beta=0.05, lambda_p=1e-3).backward()
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0
    assert embed.weight.grad is None and head.weight.grad is None


def test_verbalization_picks_nearest_token_by_cosine():
    prompt = torch.tensor([[3.0, 0.2], [0.1, 5.0], [-0.5, 0.0]])
    assert soft_prompt.verbalize_ids(prompt, EMB).tolist() == [1, 2, 3]


def test_drift_monitor_counts_consecutive_failures_only():
    monitor = DriftMonitor(consecutive=2, window=6)
    bad, good = TurnCheck(0.1, False), TurnCheck(0.9, True)
    assert not monitor.observe(bad)
    assert not monitor.observe(good)  # the run is broken
    assert not monitor.observe(bad)
    assert monitor.observe(bad)  # two in a row
    monitor.reset()
    assert not monitor.observe(TurnCheck(0.9, True, gap=0.8, gap_ok=False))
    with pytest.raises(ValueError):
        DriftMonitor(consecutive=3, window=2)
