"""Mining loop, LoRA training and the adaptation chain on a tiny random Llama built in code."""

from __future__ import annotations

import random

import pytest
import torch

from soma.algo import config, lm, neighbourhood, soft_prompt
from soma.algo.adaptation import VARIANTS, Case, Surrogate, adapt, split_acceptance
from soma.algo.lora_train import SessionAdapters, TrainingPair, train
from soma.algo.mining import WarmTurn, clean_verbalization, mine
from soma.algo.teacher_client import Completion, VerbalizedTeacher, prompted_messages
from soma.models.chat_backend import SamplingParams, TransformersChatBackend
from soma.models.testing import build_tiny_chat_model

TURNS = [
    WarmTurn(({"role": "user", "content": "hello world python code"},), "the answer is code"),
    WarmTurn(
        (
            {"role": "user", "content": "hello world python code"},
            {"role": "assistant", "content": "the answer is code"},
            {"role": "user", "content": "print a list"},
        ),
        "print the list value",
    ),
    WarmTurn(({"role": "user", "content": "what is a dict"},), "a dict maps keys to values"),
]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "chat")


@pytest.fixture()
def backend(tiny_path):
    return TransformersChatBackend(str(tiny_path), name="tiny")


@pytest.fixture()
def cfg():
    return config.preset("tiny")


def _neighbours(backend, k):
    return neighbourhood.nearest_neighbours(lm.input_embeddings(backend.model), k)


class RecordingTeacher:
    """A deterministic stand-in for F that records what it was asked."""

    def __init__(self):
        self.seen: list[list[dict]] = []

    def complete(self, conversations, max_new_tokens):
        self.seen += [list(c) for c in conversations]
        return [Completion(f"reply to {c[-1]['content'][:12]}", 5, 3) for c in conversations]


def test_mining_trains_only_the_prompt_and_batches_candidates(backend, cfg):
    mining = cfg.mining.model_copy(update={"steps": 3, "candidates": 3, "lr": 0.05})
    before = {n: p.detach().clone() for n, p in backend.model.named_parameters()}
    flags = {n: p.requires_grad for n, p in backend.model.named_parameters()}
    result = mine(backend.model, backend.tokenizer, TURNS, _neighbours(backend, 5), mining, seed=3)
    for name, p in backend.model.named_parameters():
        assert p.grad is None, name
        assert torch.equal(p, before[name]), f"G's weight {name} changed during mining"
        assert p.requires_grad == flags[name]
    init = soft_prompt.init_prompts(
        3, mining.prompt_length, result.prompts.shape[-1], mining.init_sigma, torch.Generator().manual_seed(3)
    )
    assert result.prompts.shape == init.shape
    assert not torch.allclose(result.prompts, init), "P received no update"
    assert len(result.cases) == 3 * len(TURNS)  # every (candidate, turn) scored
    assert len(result.objective) == 3
    assert all(c.disagreement > 0 for c in result.cases)
    hard = result.turn_hardness("disagreement", len(TURNS))
    for t in range(len(TURNS)):
        assert hard[t] == max(c.disagreement for c in result.cases if c.turn == t)


def test_objective_decreases_with_steps(backend, cfg):
    mining = cfg.mining.model_copy(update={"steps": 12, "candidates": 2, "lr": 0.05, "init_sigma": 0.5})
    result = mine(backend.model, backend.tokenizer, TURNS[:2], _neighbours(backend, 5), mining, seed=1)
    assert result.objective[-1] < result.objective[0]


def test_verbalization_never_contains_control_tokens(backend):
    special = lm.special_ids(backend.tokenizer)
    emb = lm.input_embeddings(backend.model)
    prompt = emb[special].detach().clone()  # rows exactly on the control tokens
    ids = soft_prompt.verbalize_ids(prompt, emb, exclude=special).tolist()
    assert not set(ids) & set(special)
    assert clean_verbalization("a\x00b <|im_start|> c\ufffd") == "ab im_start c"


def test_teacher_sees_verbalization_and_is_cached_per_verbalization():
    client = RecordingTeacher()
    teacher = VerbalizedTeacher(client)
    msgs = TURNS[1].messages
    first = teacher.answers([("alpha beta", msgs), ("alpha beta", msgs), ("gamma", msgs)], 8)
    assert client.seen[0][0]["content"] == "alpha beta hello world python code"
    assert client.seen[0][-1] == msgs[-1]  # the query itself is untouched
    assert teacher.calls == 2 and teacher.hits == 1 and first[0] == first[1]
    teacher.answers([("alpha beta", msgs)], 8)
    assert teacher.calls == 2  # unchanged V(P): F is not called again
    with_system = prompted_messages("v", [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}])
    assert with_system == [{"role": "system", "content": "s"}, {"role": "user", "content": "v q"}]


def test_lora_trains_only_its_adapter_and_keeps_the_best_holdout(backend, cfg):
    adapters = SessionAdapters(backend.model, cfg.lora)
    base = {n: p.detach().clone() for n, p in adapters.base.named_parameters() if "lora_" not in n}
    pairs = [TrainingPair(t.messages, t.answer, hardness=h) for t, h in zip(TURNS * 2, [1, 2, 3, 1, 2, 3], strict=True)]
    lora = cfg.lora.model_copy(update={"steps": 4, "lr": 1e-2, "holdout_fraction": 0.34, "eval_every": 1})
    report = train(adapters, "s1", backend.tokenizer, pairs, lora, seed=0)
    assert report.holdout == 2 and report.examples == 4
    for name, p in adapters.base.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, base[name]), f"base weight {name} changed"
            assert p.grad is None or p.grad.abs().sum() == 0
    trained_b = [p for n, p in adapters.peft.named_parameters() if "lora_B.s1." in n]
    assert trained_b and any(p.abs().sum() > 0 for p in trained_b)
    best = min(loss for _, loss in report.holdout_loss)
    assert report.best_step == next(step for step, loss in report.holdout_loss if loss == best)


def test_second_session_starts_from_a_zero_adapter(backend, cfg):
    adapters = SessionAdapters(backend.model, cfg.lora)
    lora = cfg.lora.model_copy(update={"steps": 3, "lr": 5e-2})
    train(adapters, "first", backend.tokenizer, [TrainingPair(t.messages, t.answer) for t in TURNS], lora)
    adapters.new("second", lora)
    b_second = [p for n, p in adapters.peft.named_parameters() if "lora_B.second." in n]
    assert b_second and all(torch.count_nonzero(p) == 0 for p in b_second)
    ids = torch.tensor([lm.chat_ids(backend.tokenizer, TURNS[0].messages)])
    with torch.no_grad():
        with adapters.using(None) as m:
            base_logits = m(input_ids=ids).logits
        with adapters.using("second") as m:
            second_logits = m(input_ids=ids).logits
        with adapters.using("first") as m:
            first_logits = m(input_ids=ids).logits
    assert torch.allclose(base_logits, second_logits, atol=1e-6)
    assert not torch.allclose(base_logits, first_logits, atol=1e-4)
    adapters.delete("first")
    with pytest.raises(KeyError):
        with adapters.using("first"):
            pass


def test_acceptance_split_is_disjoint_and_keeps_training_data():
    cases = [Case((), f"a{i}", 1.0, "warm", f"warm:{i}") for i in range(7)]
    for seed in range(20):
        training, acceptance = split_acceptance(cases, 3, random.Random(seed))
        assert len(acceptance) == 3 and len(training) == 4
        assert not {c.key for c in training} & {c.key for c in acceptance}
    training, acceptance = split_acceptance(cases[:3], 5, random.Random(0))
    assert len(training) == 2 and len(acceptance) == 1  # never fewer than 2 training cases


def test_adaptation_chain_acceptance_batch_disjoint_from_training(backend, cfg):
    adapters = SessionAdapters(backend.model, cfg.lora)
    surrogate = Surrogate(backend, adapters, _neighbours(backend, cfg.mining.neighbours))
    client = RecordingTeacher()
    teacher = VerbalizedTeacher(client)

    def gaps(pairs):
        return [0.0 if a == b else 0.5 for a, b in pairs]

    outcome = adapt(VARIANTS["soma"], TURNS, surrogate=surrogate, teacher=teacher, gaps=gaps, cfg=cfg, adapter="x")
    assert outcome.acceptance_keys and outcome.training_keys
    assert not set(outcome.acceptance_keys) & set(outcome.training_keys)
    assert teacher.calls == outcome.teacher_calls > 0
    verbalized = {v for v in outcome.verbalizations if v}
    assert any(
        any(m["content"].split(" ")[0] in " ".join(verbalized) for m in conv if m["role"] == "user")
        for conv in client.seen
    )
    assert set(outcome.seconds) == {"mining", "teacher", "training", "gate"}
    assert "x" in adapters.names

    ref = adapt(VARIANTS["soma-ref"], TURNS, surrogate=surrogate, teacher=teacher, gaps=gaps, cfg=cfg, adapter="ref")
    assert ref.teacher_calls == 0  # F never sees V(P) in the reference code
    assert set(ref.acceptance_keys) == set(ref.training_keys)  # its gate scores the training data
    assert "fixed threshold" in ref.decision.reason


def test_batched_generation_matches_single(backend):
    params = SamplingParams(max_new_tokens=6)
    convs = [list(TURNS[0].messages), list(TURNS[1].messages)]
    batched = backend.generate_batch(convs, params, with_logprobs=True)
    for conv, got in zip(convs, batched, strict=True):
        single = backend.generate(conv, params)
        assert got.text == single.text
        assert got.mean_logprob is not None and got.mean_logprob <= 0


def test_method_config_presets_and_paper_ranges():
    assert config.preset("cpu") == config.MethodConfig()
    paper = config.preset("paper")
    assert paper.outside_paper_ranges() == []
    tiny = config.preset("tiny")
    assert any(item.startswith("warm_turns = 2") for item in tiny.outside_paper_ranges())
    with pytest.raises(ValueError, match="unknown method setting"):
        config.MethodConfig().with_changes({"mining.nope": 1})
    with pytest.raises(ValueError):
        config.MethodConfig().with_changes({"mining.tau": -1})
    with pytest.raises(ValueError, match="drift.window"):
        config.MethodConfig().with_changes({"drift.window": 1, "drift.consecutive": 2})
    with pytest.raises(ValueError, match="unknown budget"):
        config.preset("huge")
