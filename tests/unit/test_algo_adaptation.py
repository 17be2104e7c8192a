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
from soma.chat import SamplingParams
from soma.models.chat_backend import TransformersChatBackend
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


def test_zero_mining_steps_score_hardness_without_searching(backend, cfg):
    """`mining.steps = 0`: no search, one forward pass; P stays at its initial draw and every turn
    still gets a hardness (G's loss on F's answer), so the warm pairs are weighted as before."""
    mining = cfg.mining.model_copy(update={"steps": 0, "candidates": 2})
    result = mine(backend.model, backend.tokenizer, TURNS, _neighbours(backend, 5), mining, seed=3)
    init = soft_prompt.init_prompts(
        2, mining.prompt_length, result.prompts.shape[-1], mining.init_sigma, torch.Generator().manual_seed(3)
    )
    assert torch.equal(result.prompts, init) and result.objective == []
    assert len(result.cases) == 2 * len(TURNS)
    hard = result.turn_hardness("disagreement", len(TURNS))
    assert all(h > 0 for h in hard) and len(set(hard)) > 1


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


def test_the_gates_one_mixed_batch_answers_as_base_and_adapter_apart(backend, cfg):
    """The gate generates base G's and the adapter's answers in one batch: each row must get exactly
    what a batch of its own adapter alone gives, and the hooks must be gone afterwards."""
    adapters = SessionAdapters(backend.model, cfg.lora)
    lora = cfg.lora.model_copy(update={"steps": 3, "lr": 5e-2})
    train(adapters, "session", backend.tokenizer, [TrainingPair(t.messages, t.answer) for t in TURNS], lora)
    surrogate = Surrogate(backend, adapters, _neighbours(backend, 5))
    conversations = [list(t.messages) for t in TURNS]
    base_alone = [o.text for o in surrogate.answers(None, conversations, 8)]
    adapted_alone = [o.text for o in surrogate.answers("session", conversations, 8)]
    assert base_alone != adapted_alone  # the adapter changed something, so a mix-up would show
    base, adapted = surrogate.base_and_adapted_answers("session", conversations, 8)
    assert [o.text for o in base] == base_alone and [o.text for o in adapted] == adapted_alone
    assert [o.text for o in surrogate.answers("session", conversations, 8)] == adapted_alone  # no hook left behind
    assert [o.text for o in surrogate.answers(None, conversations, 8)] == base_alone
    # rows of two adapters take PEFT's mixed-batch path: each row still gets its own adapter's answer
    train(adapters, "other", backend.tokenizer, [TrainingPair(t.messages, "no") for t in TURNS], lora)
    other_alone = [o.text for o in surrogate.answers("other", conversations, 8)]
    assert other_alone != adapted_alone
    with adapters.mixed(["other", "session", None]):
        three = backend.generate_batch(conversations[:1] * 3, SamplingParams(max_new_tokens=8))
    assert [o.text for o in three] == [other_alone[0], adapted_alone[0], base_alone[0]]
    with pytest.raises(KeyError):
        with adapters.mixed([None, "nope"]):
            pass


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


def test_acceptance_split_takes_whole_turns_and_keeps_training_data():
    cases = [Case((), f"w{t}", 1.0, "warm", f"warm:{t}", t) for t in range(4)]
    cases += [Case((), f"m{t}", 1.0, "mined", f"mined:0:{t}", t) for t in range(4)]
    for seed in range(20):
        training, acceptance = split_acceptance(cases, 3, random.Random(seed))
        assert len(acceptance) == 4 and len(training) == 4  # two whole turns: 3 cases need 2 turns
        assert not {c.turn for c in training} & {c.turn for c in acceptance}
        assert not {c.key for c in training} & {c.key for c in acceptance}
    training, acceptance = split_acceptance(cases[:2] + cases[4:6], 10, random.Random(0))
    assert {c.turn for c in training} and {c.turn for c in acceptance}  # always a turn left to train on


def test_adaptation_chain_acceptance_batch_disjoint_from_training(backend, cfg):
    adapters = SessionAdapters(backend.model, cfg.lora)
    surrogate = Surrogate(backend, adapters, _neighbours(backend, cfg.mining.neighbours))
    client = RecordingTeacher()
    teacher = VerbalizedTeacher(client)

    def gaps(pairs):
        return [0.0 if a == b else 0.5 for a, b in pairs]

    captured = {}
    import soma.algo.adaptation as adaptation_module

    real_train = adaptation_module.lora_train.train

    def spy(adapters_, name, tokenizer, pairs, lora_cfg, **kw):
        captured["pairs"] = list(pairs)
        return real_train(adapters_, name, tokenizer, pairs, lora_cfg, **kw)

    adaptation_module.lora_train.train = spy
    try:
        outcome = adapt(VARIANTS["soma"], TURNS, surrogate=surrogate, teacher=teacher, gaps=gaps, cfg=cfg, adapter="x")
    finally:
        adaptation_module.lora_train.train = real_train
    assert outcome.acceptance_keys and outcome.training_keys
    turn_of = lambda key: int(key.rsplit(":", 1)[1])  # noqa: E731
    assert not {turn_of(k) for k in outcome.acceptance_keys} & {turn_of(k) for k in outcome.training_keys}
    assert teacher.calls == outcome.teacher_calls > 0
    # what F read counts as much as what it wrote: the prompt tokens of every mined query are counted
    assert outcome.teacher_prompt_tokens == teacher.prompt_tokens > 0
    assert outcome.teacher_tokens == teacher.completion_tokens > 0
    mined = [p for p in captured["pairs"] if p.source == "mined"]
    assert mined, "no mined pair reached training"
    for pair in mined:
        # the context is V(P) ⊕ S_t and the target is what F answered under it
        verbalization = next(v for v in outcome.verbalizations if v and pair.messages[0]["content"].startswith(v))
        assert pair.answer.startswith("reply to ")
        assert any(seen[0]["content"].startswith(verbalization) for seen in client.seen)
    assert set(outcome.seconds) == {"mining", "teacher", "training", "gate"}
    assert "x" in adapters.names

    ref = adapt(VARIANTS["soma-ref"], TURNS, surrogate=surrogate, teacher=teacher, gaps=gaps, cfg=cfg, adapter="ref")
    assert ref.teacher_calls == 0  # F never sees V(P) in the reference code
    assert set(ref.acceptance_keys) == set(ref.training_keys)  # its gate scores the training data
    assert "fixed threshold" in ref.decision.reason


def test_mining_logits_match_a_full_forward(backend, cfg):
    """The answer-position gather in mining equals slicing a full forward pass (no off-by-one)."""
    from soma.algo.mining import _batch, encode_turns

    emb = lm.input_embeddings(backend.model).detach()
    encoded = encode_turns(backend.tokenizer, TURNS[:2], cfg.mining)
    length = 3
    rows, tokens, mask, pos_r, pos_c, spans = _batch(encoded, 1, length, emb)
    prompt = torch.randn(len(rows), length, emb.shape[1]) * 0.1
    inputs = torch.cat([prompt, tokens], dim=1)
    with torch.no_grad():
        got = lm.logits_at(backend.model, inputs, mask, pos_r, pos_c)
        for r, e in enumerate(encoded):
            n = length + len(e.context) + len(e.answer)
            full = backend.model(inputs_embeds=inputs[r : r + 1, :n]).logits[0]
            a, b = spans[r]
            expected = full[length + len(e.context) - 1 : n - 1]  # position p predicts token p + 1
            assert torch.allclose(got[a:b], expected, atol=1e-4)
            assert torch.equal(full[length + len(e.context) - 1 : n - 1].argmax(-1), got[a:b].argmax(-1))


def test_training_loss_equals_weighted_nll_on_full_logits(backend, cfg):
    from soma.algo.lora_objective import collate, weighted_nll
    from soma.algo.lora_train import build_examples, example_loss

    pairs = [TrainingPair(t.messages, t.answer, hardness=h) for t, h in zip(TURNS, [1.0, 2.0, 3.0], strict=True)]
    examples = build_examples(backend.tokenizer, pairs, cfg.lora, weighted=True)
    batch = collate(examples, 0)
    with torch.no_grad():
        logits = backend.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        expected = weighted_nll(logits, batch["labels"], batch["weights"])
        got = example_loss(backend.model, examples, 0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-4)


def test_a_repeated_example_is_computed_once_with_the_same_loss_and_gradient(backend, cfg):
    """Two examples in a batch of four: the de-duplicated batch must train exactly as the repeated one."""
    from soma.algo.lora_train import build_examples, example_loss

    pairs = [TrainingPair(t.messages, t.answer, hardness=h) for t, h in zip(TURNS[:2], [1.0, 3.0], strict=True)]
    examples = build_examples(backend.tokenizer, pairs, cfg.lora, weighted=True)
    params = [p for p in backend.model.parameters() if p.requires_grad]

    def loss_and_grads(*args):
        for p in params:
            p.grad = None
        loss = example_loss(backend.model, *args)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in params]

    repeated, grads_repeated = loss_and_grads([examples[0], examples[1], examples[0], examples[0]], 0)
    once, grads_once = loss_and_grads(examples, 0, [3, 1])
    assert once == pytest.approx(repeated, rel=1e-5)
    for a, b in zip(grads_once, grads_repeated, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_eos_target_only_when_the_teacher_finished(backend, cfg):
    from soma.algo.lora_train import build_examples

    eos = backend.tokenizer.eos_token_id
    finished, cut = build_examples(
        backend.tokenizer,
        [TrainingPair(TURNS[0].messages, "the answer"), TrainingPair(TURNS[0].messages, "the answer", ended=False)],
        cfg.lora,
        weighted=False,
    )
    assert finished.labels[-1] == eos and cut.labels[-1] != eos
    assert finished.labels[:-1] == cut.labels


def test_batched_generation_matches_single(backend):
    params = SamplingParams(max_new_tokens=6)
    convs = [list(TURNS[0].messages), list(TURNS[1].messages)]
    batched = backend.generate_batch(convs, params, with_logprobs=True)
    for conv, got in zip(convs, batched, strict=True):
        single = backend.generate(conv, params)
        assert got.text == single.text
        assert got.mean_logprob is not None and got.mean_logprob <= 0


def test_method_config_presets_and_paper_ranges():
    # the cpu budget drops the soft-prompt search, F's mined answers (docs/bench/recipe/round2) and the
    # candidates that would only score the same turns again, gates at ε = 0.02 and scores the first 64
    # tokens of both answers (docs/bench/fidelity-report); nothing else
    assert config.preset("cpu") == config.MethodConfig().with_changes(
        {
            "mining.mined_pairs": 0,
            "mining.steps": 0,
            "mining.candidates": 1,
            "gate.epsilon": 0.02,
            "gate.score_tokens": 64,
        }
    )
    assert config.MethodConfig().gate.score_tokens == 0  # whole answers stay the model default (the paper's)
    assert config.MethodConfig().gate.epsilon == 0.05  # the paper's ε stays the model default
    paper = config.preset("paper")
    assert paper.mining.mined_pairs > 0 and paper.mining.steps > 0  # the paper's whole chain stays selectable
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


def test_early_stopping_holdout_never_shares_a_turn_with_training():
    from soma.algo.lora_train import split_holdout

    groups = [0, 0, 1, 1, 2, 2, 3, 3, 4]  # a warm pair and its mined pair share a turn
    for seed in range(30):
        train_idx, hold_idx = split_holdout(len(groups), 0.4, random.Random(seed), groups)
        assert hold_idx and len(train_idx) >= 2
        assert not {groups[i] for i in train_idx} & {groups[i] for i in hold_idx}
        assert sorted(train_idx + hold_idx) == list(range(len(groups)))
    # two turns: holding one out would leave fewer than two examples' worth of turns -> no holdout
    assert split_holdout(2, 0.5, random.Random(0), [0, 1])[1] == []


def _cases(hardness):
    served = lambda t: ({"role": "user", "content": f"[summary] q{t}"},)  # noqa: E731
    warm = [
        Case(({"role": "user", "content": f"q{t}"},), f"a{t}", h, "warm", f"warm:{t}", t, served=served(t))
        for t, h in enumerate(hardness)
    ]
    mined = [
        Case(({"role": "user", "content": f"v q{t}"},), f"m{t}", h, "mined", f"mined:0:{t}", t, served=served(t))
        for t, h in enumerate(hardness)
    ]
    return warm, mined


def test_hardest_warm_turns_train_and_the_rest_gate_never_overlapping():
    from soma.algo.adaptation import training_split

    warm, mined = _cases([0.2, 0.9, 0.5, 0.7])
    cfg = config.preset("cpu").with_changes({"gate.split": "hardest_train"})  # W = 4, |B| = 2, warm-only B
    training, acceptance = training_split(VARIANTS["soma"], warm, mined, cfg, seed=0)
    assert {c.turn for c in training} == {1, 3} and {c.turn for c in acceptance} == {0, 2}
    assert all(c.source == "warm" for c in acceptance)  # B: warm turns only
    assert {c.key for c in training} == {"warm:1", "warm:3", "mined:0:1", "mined:0:3"}
    with_mined = cfg.with_changes({"gate.mined_in_acceptance": True})
    _, acceptance = training_split(VARIANTS["soma"], warm, mined, with_mined, seed=0)
    assert {c.key for c in acceptance} == {"warm:0", "warm:2", "mined:0:0", "mined:0:2"}
    paper = cfg.with_changes({"gate.split": "random", "gate.acceptance_size": 2})
    for seed in range(20):
        training, acceptance = training_split(VARIANTS["soma"], warm, mined, paper, seed=seed)
        assert not {c.turn for c in training} & {c.turn for c in acceptance}


def test_random_split_asks_f_only_about_the_turns_the_training_split_keeps(backend, cfg):
    from soma.algo.adaptation import mining_stage, training_split

    surrogate = Surrogate(
        backend, SessionAdapters(backend.model, cfg.lora), _neighbours(backend, cfg.mining.neighbours)
    )
    random_split = cfg.with_changes({"mining.mined_pairs": 4, "gate.acceptance_size": 1, "gate.split": "random"})
    for seed in (0, 1, 2):
        stage = mining_stage(
            VARIANTS["soma"],
            TURNS,
            surrogate=surrogate,
            teacher=VerbalizedTeacher(RecordingTeacher()),
            cfg=random_split,
            seed=seed,
        )
        training, acceptance = training_split(VARIANTS["soma"], stage.warm, stage.mined, random_split, seed)
        assert stage.mined and {c.key for c in stage.mined} <= {c.key for c in training}  # none wasted
        assert not {c.turn for c in stage.mined} & {c.turn for c in acceptance}


def test_training_pairs_and_gate_read_the_served_context():
    warm, _ = _cases([0.5])
    case = warm[0]
    assert case.pair("served").messages == case.served and case.pair("full").messages == case.messages
    assert [p.messages for p in case.pairs("both")] == [case.served, case.messages]
    assert all(p.turn == 0 for p in case.pairs("both"))  # early stopping keeps them together
    assert case.gate_messages("served") == list(case.served) and case.gate_messages("full") == list(case.messages)
    unknown = Case(case.messages, "a", 1.0, "warm", "warm:0", 0)  # no S̃_t known: the full context stands in
    assert unknown.pair("served").messages == unknown.messages


def test_v_of_p_in_the_system_role_leaves_every_user_message_intact():
    msgs = [{"role": "user", "content": "first question"}]
    assert prompted_messages("salad words", msgs, "system") == [
        {"role": "system", "content": "salad words"},
        {"role": "user", "content": "first question"},
    ]
    with_system = [{"role": "system", "content": "Be brief."}, *msgs]
    assert prompted_messages("salad", with_system, "system") == [
        {"role": "system", "content": "Be brief.\n\nsalad"},
        {"role": "user", "content": "first question"},
    ]
    assert prompted_messages("salad", msgs, "first_message")[0]["content"] == "salad first question"
    with pytest.raises(ValueError):
        prompted_messages("v", msgs, "nowhere")


def test_mined_cases_are_asked_for_training_turns_only_at_the_warm_answer_length(backend, cfg):
    from soma.algo.adaptation import mining_stage

    class Lengths(RecordingTeacher):
        def complete(self, conversations, max_new_tokens):
            self.budget = max_new_tokens
            return super().complete(conversations, max_new_tokens)

    adapters = SessionAdapters(backend.model, cfg.lora)
    surrogate = Surrogate(backend, adapters, _neighbours(backend, cfg.mining.neighbours))
    client = Lengths()
    tiny = cfg.with_changes(
        {"mining.mined_pairs": 4, "gate.acceptance_size": 1, "lora.top_warm": 1, "gate.split": "hardest_train"}
    )
    stage = mining_stage(VARIANTS["soma"], TURNS, surrogate=surrogate, teacher=VerbalizedTeacher(client), cfg=tiny)
    hardest = max(stage.warm, key=lambda c: c.hardness).turn
    assert stage.mined and {c.turn for c in stage.mined} == {hardest}  # F is not asked for unused turns
    longest = max(len(lm.text_ids(backend.tokenizer, t.answer)) for t in TURNS)
    assert client.budget == max(16, longest)
    for seen in client.seen:  # V(P) sits in the system role; the user's words reach F untouched
        assert seen[0]["role"] == "system" and seen[1:] == list(TURNS[hardest].messages)


def test_random_split_of_two_warm_turns_keeps_one_to_train_and_one_to_gate():
    """The tiny budget (W = 2) under the default random split: B is never empty."""
    from soma.algo.adaptation import training_split, warm_gate_turns

    warm, mined = _cases([0.3, 0.8])
    cfg = config.preset("tiny")
    assert cfg.gate.split == "random"
    for seed in range(10):
        training, acceptance = training_split(VARIANTS["soma"], warm, mined, cfg, seed)
        assert len({c.turn for c in acceptance}) == 1 and len({c.turn for c in training}) == 1
        assert {c.turn for c in acceptance} == warm_gate_turns(2, cfg, seed)


def test_recent_train_split_gates_on_the_oldest_turns_and_trains_on_the_latest():
    """`gate.split = recent_train`: whatever the hardness and the seed, the oldest |B| warm turns gate and
    the most recent train; the mining job is asked only about the training turns, with mined cases."""
    from soma.algo.adaptation import training_split, warm_gate_turns

    warm, mined = _cases([0.9, 0.8, 0.1, 0.2])  # the oldest turns are the hardest: hardness must not move B
    cfg = config.preset("cpu").with_changes({"gate.split": "recent_train", "mining.mined_pairs": 4})
    for seed in range(5):
        training, acceptance = training_split(VARIANTS["soma"], warm, mined, cfg, seed)
        assert {c.turn for c in acceptance} == {0, 1} == warm_gate_turns(4, cfg, seed)
        assert {c.turn for c in training} == {2, 3}
        assert all(c.source == "warm" for c in acceptance)
        assert {c.key for c in training if c.source == "mined"} == {"mined:0:2", "mined:0:3"}
    # B never takes every turn: with two warm turns one gates (the older) and one trains
    training, acceptance = training_split(VARIANTS["soma"], warm[:2], mined[:2], cfg, 0)
    assert [c.turn for c in acceptance] == [0] and {c.turn for c in training} == {1}
    # with gate.mined_in_acceptance, B takes its turns' mined cases too, still the oldest turns
    pooled = cfg.with_changes({"gate.mined_in_acceptance": True})
    training, acceptance = training_split(VARIANTS["soma"], warm, mined, pooled, 3)
    assert {c.key for c in acceptance} == {"warm:0", "warm:1", "mined:0:0", "mined:0:1"}
    assert not {c.turn for c in training} & {0, 1}


def test_the_gate_answers_as_long_as_f_did_never_above_the_served_length(backend, cfg):
    """A session served 48-token answers is gated at about that length, not at the configured 256."""
    from soma.algo.adaptation import gate_answer_tokens

    tok = backend.tokenizer
    long_answer = " ".join(["word"] * 60)
    cases = [
        Case(({"role": "user", "content": "q"},), "short answer", 1.0, "warm", "warm:0", 0),
        Case(({"role": "user", "content": "q"},), long_answer, 1.0, "warm", "warm:1", 1),
    ]
    longest = len(lm.text_ids(tok, long_answer))
    assert 16 < longest < 256
    teacher = cfg.model_copy(update={"gate": cfg.gate.model_copy(update={"answer_tokens": 0})})
    assert teacher.gate.answer_length == "teacher"  # the default
    assert gate_answer_tokens(tok, cases, teacher, serve_tokens=256) == longest
    assert gate_answer_tokens(tok, cases, teacher, serve_tokens=32) == 32  # never above what is served
    assert gate_answer_tokens(tok, cases[:1], teacher, serve_tokens=256) == 16  # at least 16
    served = teacher.with_changes({"gate.answer_length": "served"})
    assert gate_answer_tokens(tok, cases, served, serve_tokens=256) == 256
    fixed = teacher.with_changes({"gate.answer_tokens": 40})
    assert gate_answer_tokens(tok, cases, fixed, serve_tokens=256) == 40
    capped = teacher.with_changes({"gate.score_tokens": 20})  # scored on a 20-token prefix: G asked no more
    assert gate_answer_tokens(tok, cases, capped, serve_tokens=256) == 20
    assert gate_answer_tokens(tok, cases[:1], capped, serve_tokens=256) == 16  # under the cap: unchanged


def test_gate_score_tokens_cuts_both_answers_to_the_same_prefix(backend, cfg, monkeypatch):
    """With `gate.score_tokens` N, G answers on B at most N tokens and F's answer is cut to its first N
    tokens (G's tokenizer), so Gap compares the same span; 0 (the default) scores whole answers."""
    from soma.algo.adaptation import acceptance_answers
    from tests.recorders import record_gate_lengths

    tok = backend.tokenizer
    adapters = SessionAdapters(backend.model, cfg.lora)
    train(adapters, "session", tok, [TrainingPair(t.messages, t.answer) for t in TURNS], cfg.lora)
    surrogate = Surrogate(backend, adapters, _neighbours(backend, 5))
    long_answer = " ".join(["the answer is code"] * 10)
    cases = [Case(t.messages, long_answer, 1.0, "warm", f"warm:{i}", i) for i, t in enumerate(TURNS[:2])]
    whole = cfg.with_changes({"gate.answer_tokens": 0, "gate.answer_length": "teacher"})
    assert whole.gate.score_tokens == 0  # the default
    asked = record_gate_lengths(surrogate, monkeypatch)
    out = acceptance_answers(surrogate, "session", cases, whole, serve_tokens=256)
    longest = len(lm.text_ids(tok, long_answer))
    assert [f for f, _, _ in out] == [long_answer] * 2 and asked == [longest]
    prefix = whole.with_changes({"gate.score_tokens": 6})
    out = acceptance_answers(surrogate, "session", cases, prefix, serve_tokens=256)
    assert asked[-1] == 6  # G generates at most 6 new tokens
    assert [lm.text_ids(tok, f) for f, _, _ in out] == [lm.text_ids(tok, long_answer)[:6]] * 2
    short = whole.with_changes({"gate.score_tokens": 500})  # longer than every answer: nothing is cut
    assert [f for f, _, _ in acceptance_answers(surrogate, "session", cases, short, 256)] == [long_answer] * 2
    assert asked[-1] == longest
