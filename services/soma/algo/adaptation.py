"""One session's adaptation chain: mining → teacher under V(P) → localized LoRA → acceptance test.

The chain is the same for the product (the jobs run its stages) and the benchmark, which also
runs the ablations and the reference code's shortcuts through `Variant` flags. The acceptance
batch B is split from the session's cases *by warm turn* before training, so the gate never
scores a context the adapter saw. With `lora.context = served` the adapter trains on S̃_t, the
compressed context it will be served with, and B is answered on S̃_t too: train, gate and
serve read the same context.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from soma.algo import gate_stats, lm, lora_train
from soma.algo.config import MethodConfig
from soma.algo.lora_train import SessionAdapters, TrainingPair, TrainingReport
from soma.algo.mining import MiningResult, WarmTurn, mine
from soma.algo.teacher_client import VerbalizedTeacher, prompted_messages
from soma.chat import SamplingParams


@dataclass(frozen=True)
class Variant:
    """What distinguishes SOMA, its ablations and the reference code's shortcuts."""

    name: str
    teacher_sees_prompt: bool = True  # soma-ref: F never sees V(P); mined pairs reuse the warm answer
    gate: Literal["held_out", "in_sample_threshold"] = "held_out"
    anti_degeneration: bool = True  # β > 0
    expectation_weight: bool = True  # Eq. 2 weight


VARIANTS = {
    "soma": Variant("soma"),
    "soma-no-antidegen": Variant("soma-no-antidegen", anti_degeneration=False),
    "soma-no-expweight": Variant("soma-no-expweight", expectation_weight=False),
    "soma-ref": Variant("soma-ref", teacher_sees_prompt=False, gate="in_sample_threshold"),
}
REFERENCE_THRESHOLD = 0.5  # the reference code's fixed in-sample cosine threshold (Gap ≤ 0.5)


@dataclass(frozen=True)
class Case:
    """A supervised case: context, F's answer, hardness, and where it came from."""

    messages: tuple[dict[str, str], ...]
    answer: str
    hardness: float
    source: str  # warm | mined
    key: str  # unique within the session: warm:t or mined:m:t
    turn: int = 0  # the warm-start turn whose context S_t this case is built on
    ended: bool = True  # F finished the answer (it gets an EOS target)
    verbalization: str = ""  # V(P) of a mined case (its messages are V(P) ⊕ S_t)
    served: tuple[dict[str, str], ...] = ()  # the same case on S̃_t (V(P) placed alike); empty: unknown

    def pair(self, context: str = "full") -> TrainingPair:
        """The training pair on the full context, or on the served one (falls back to full when unknown)."""
        messages = self.served if context == "served" and self.served else self.messages
        return TrainingPair(messages, self.answer, self.hardness, self.source, self.ended, self.turn)

    def pairs(self, context: str) -> list[TrainingPair]:
        """`lora.context`: served, full, or both (two pairs of one turn, which early stopping keeps together)."""
        if context == "both":
            return [self.pair("served"), self.pair("full")] if self.served else [self.pair("full")]
        return [self.pair(context)]

    def gate_messages(self, context: str) -> list[dict[str, str]]:
        """The context B is answered on: the one the adapter is served with (full when it trains on full)."""
        return list(self.served if context != "full" and self.served else self.messages)


@dataclass
class AdaptationOutcome:
    variant: str
    adapter: str
    decision: gate_stats.AcceptDecision
    training_keys: list[str]
    acceptance_keys: list[str]
    seconds: dict[str, float] = field(default_factory=dict)  # mining, teacher, training, gate
    teacher_calls: int = 0
    teacher_tokens: int = 0  # completion tokens F generated for the mined cases
    teacher_prompt_tokens: int = 0  # and the prompt tokens F read for them (V(P) ⊕ S_t)
    verbalizations: list[str] = field(default_factory=list)
    training: TrainingReport | None = None
    gaps_old: list[float] = field(default_factory=list)
    gaps_new: list[float] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


class Surrogate:
    """G as the chain needs it: the chat backend (batched generation), its adapters and N_k."""

    def __init__(self, backend: Any, adapters: SessionAdapters, neighbours: torch.Tensor):
        self.backend = backend
        self.adapters = adapters
        self.neighbours = neighbours

    @property
    def tokenizer(self) -> Any:
        return self.backend.tokenizer

    def answers(self, adapter: str | None, conversations: Sequence[Sequence[dict]], max_new_tokens: int, **kw):
        with self.adapters.using(adapter):
            return self.backend.generate_batch(conversations, SamplingParams(max_new_tokens=max_new_tokens), **kw)

    def base_and_adapted_answers(self, adapter: str, conversations: Sequence[Sequence[dict]], max_new_tokens: int):
        """(base G's answers, adapter's answers) on the same conversations: one batch where the adapters
        can mix rows (PEFT), two otherwise."""
        mixed = getattr(self.adapters, "mixed", None)
        if mixed is None or not conversations:
            base = self.answers(None, conversations, max_new_tokens)
            return base, self.answers(adapter, conversations, max_new_tokens)
        n = len(conversations)
        with mixed([None] * n + [adapter] * n):
            outs = self.backend.generate_batch(
                [*conversations, *conversations], SamplingParams(max_new_tokens=max_new_tokens)
            )
        return outs[:n], outs[n:]


def split_acceptance(cases: Sequence[Case], size: int, rng: random.Random, min_training: int = 2):
    """(training, acceptance), split by warm-start turn: B takes whole turns, never a context it trains on.

    A mined case shares S_t with its warm turn (only V(P) differs), so splitting cases one by one
    would score the adapter on near-copies of its training data. Turns are drawn at random until
    B holds at least `size` cases, leaving at least one turn and `min_training` cases to train on.
    """
    by_turn: dict[int, list[Case]] = {}
    for case in cases:
        by_turn.setdefault(case.turn, []).append(case)
    turns = sorted(by_turn)
    rng.shuffle(turns)
    chosen: set[int] = set()
    taken = 0
    for turn in turns:
        if taken >= size:
            break
        left = len(cases) - taken - len(by_turn[turn])
        if len(turns) - len(chosen) <= 1 or left < min_training:
            continue
        chosen.add(turn)
        taken += len(by_turn[turn])
    acceptance = [c for c in cases if c.turn in chosen]
    training = [c for c in cases if c.turn not in chosen]
    assert not {c.turn for c in acceptance} & {c.turn for c in training}
    return training, acceptance


def warm_gate_turns(n_turns: int, cfg: MethodConfig, seed: int) -> set[int]:
    """The warm turns B holds when it holds warm turns only (`gate.split` random or recent_train):
    `training_split` takes B from this call, and the mining job asks F only about the turns outside it.

    random draws B's turns with `seed`; recent_train gives B the oldest turns, so the most recent ones,
    the nearest to the turns the adapter will serve, train."""
    if cfg.gate.split == "recent_train":
        n_gate = max(1, min(cfg.gate.acceptance_size, n_turns - 1))
        return set(range(n_gate))
    stand_ins = [Case((), "", 0.0, "warm", f"warm:{t}", t) for t in range(n_turns)]
    _, acceptance = split_acceptance(stand_ins, cfg.gate.acceptance_size, random.Random(seed), min_training=1)
    return {c.turn for c in acceptance}


def warm_cases(turns: Sequence[WarmTurn], hardness: Sequence[float]) -> list[Case]:
    return [
        Case(t.messages, t.answer, r, "warm", f"warm:{i}", i, t.ended, served=t.served)
        for i, (t, r) in enumerate(zip(turns, hardness, strict=True))
    ]


def mined_case(
    turns: Sequence[WarmTurn],
    turn: int,
    verbalization: str,
    answer: str,
    hardness: float,
    key: str,
    ended: bool,
    placement: str,
) -> Case:
    """A mined case on warm turn `turn`: V(P) placed in S_t (what F answered) and in S̃_t (what G trains on)."""
    warm = turns[turn]
    return Case(
        tuple(prompted_messages(verbalization, warm.messages, placement)),
        answer,
        hardness,
        "mined",
        key,
        turn,
        ended,
        verbalization,
        tuple(prompted_messages(verbalization, warm.served, placement)) if warm.served else (),
    )


def mined_answer_budget(tokenizer: Any, turns: Sequence[WarmTurn], cfg: MethodConfig) -> int:
    """F's budget for a mined case: `mining.mined_answer_tokens`, or the longest warm answer (G tokens)."""
    if cfg.mining.mined_answer_tokens:
        return cfg.mining.mined_answer_tokens
    return max(16, *(len(lm.text_ids(tokenizer, t.answer)) for t in turns))


def mined_cases(
    result: MiningResult,
    turns: Sequence[WarmTurn],
    teacher: VerbalizedTeacher,
    cfg: MethodConfig,
    variant: Variant,
    answer_tokens: int | None = None,
    seed: int = 0,
) -> list[Case]:
    """The top-hardness (candidate, turn) cases, answered by F under V(P) ⊕ S_t (or not, for soma-ref).

    F is asked only about turns that will train (`seed` is the one the training split will use)."""
    kind = cfg.lora.hardness

    def score(c) -> float:
        return c.disagreement if kind == "disagreement" else c.sem_exp

    # hardest first within each turn, then round-robin over turns, so the teacher budget covers
    # the session's turns instead of piling onto one
    wanted = set(range(len(turns)))
    if not cfg.gate.mined_in_acceptance and len(turns) >= 2 and variant.gate == "held_out":
        # only the turns that will train get mined cases: F is not asked for answers nobody uses
        if cfg.gate.split == "hardest_train":
            wanted, _ = hardest_turns(result.turn_hardness(kind, len(turns)), cfg)
        else:
            wanted -= warm_gate_turns(len(turns), cfg, seed)
    per_turn: dict[int, list] = {}
    for case in sorted(result.cases, key=score, reverse=True):
        if case.verbalization and case.turn in wanted:
            per_turn.setdefault(case.turn, []).append(case)
    ranked = [
        c for rank in range(cfg.mining.candidates) for t in sorted(per_turn) for c in per_turn[t][rank : rank + 1]
    ]
    chosen, seen = [], set()
    for case in ranked:
        signature = (case.verbalization, case.turn)
        if signature in seen:
            continue
        seen.add(signature)
        chosen.append(case)
        if len(chosen) >= cfg.mining.mined_pairs:
            break
    if not chosen:
        return []
    placement = cfg.mining.placement
    if variant.teacher_sees_prompt:
        completions = teacher.answers(
            [(c.verbalization, turns[c.turn].messages) for c in chosen],
            answer_tokens or cfg.mining.mined_answer_tokens or cfg.mining.max_answer_tokens,
            placement,
        )
        answers = [(comp.text, comp.finish_reason == "stop") for comp in completions]
    else:
        answers = [(turns[c.turn].answer, turns[c.turn].ended) for c in chosen]
    return [
        mined_case(
            turns,
            case.turn,
            case.verbalization,
            answer,
            score(case),
            f"mined:{case.candidate}:{case.turn}",
            ended,
            placement,
        )
        for case, (answer, ended) in zip(chosen, answers, strict=True)
    ]


@dataclass
class MinedStage:
    """Stage 1's output: the warm cases with their hardness and the mined cases F answered."""

    warm: list[Case]
    mined: list[Case]
    verbalizations: list[str]
    seconds: dict[str, float]
    teacher_calls: int
    teacher_tokens: int  # completion
    teacher_prompt_tokens: int = 0


@dataclass
class TrainedStage:
    adapter: str
    training: list[Case]
    acceptance: list[Case]
    report: TrainingReport
    seconds: float


def mining_stage(
    variant: Variant,
    turns: Sequence[WarmTurn],
    *,
    surrogate: Surrogate,
    teacher: VerbalizedTeacher,
    cfg: MethodConfig,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> MinedStage:
    """Mine soft prompts on the base G, score hardness, and ask F under V(P) ⊕ S_t."""
    mining_cfg = cfg.mining.model_copy(
        update={
            "beta": cfg.mining.beta if variant.anti_degeneration else 0.0,
            "use_expectation_weight": cfg.mining.use_expectation_weight and variant.expectation_weight,
        }
    )
    with surrogate.adapters.using(None) as base:
        result = mine(base, surrogate.tokenizer, turns, surrogate.neighbours, mining_cfg, seed=seed, progress=progress)
    t0 = time.perf_counter()
    calls_before, tokens_before, prompt_before = teacher.calls, teacher.completion_tokens, teacher.prompt_tokens
    warm = warm_cases(turns, result.turn_hardness(cfg.lora.hardness, len(turns)))
    budget = mined_answer_budget(surrogate.tokenizer, turns, cfg)
    mined = mined_cases(result, turns, teacher, cfg, variant, budget, seed) if cfg.mining.mined_pairs else []
    return MinedStage(
        warm,
        mined,
        result.verbalizations,
        {"mining": result.seconds, "teacher": time.perf_counter() - t0},
        teacher.calls - calls_before,
        teacher.completion_tokens - tokens_before,
        teacher.prompt_tokens - prompt_before,
    )


def hardest_turns(hardness: Sequence[float], cfg: MethodConfig) -> tuple[set[int], set[int]]:
    """(training turns, gating turns) of `gate.split = hardest_train`: at most `lora.top_warm` of the
    hardest turns train, the easiest (at least one, up to `gate.acceptance_size`) gate."""
    if len(hardness) < 2:
        raise ValueError("the acceptance test needs at least two warm turns: one to train on, one to gate")
    ranked = sorted(range(len(hardness)), key=lambda t: (-hardness[t], t))
    n_gate = max(1, min(cfg.gate.acceptance_size, len(ranked) - 1))
    n_train = max(1, min(cfg.lora.top_warm, len(ranked) - n_gate))
    return set(ranked[:n_train]), set(ranked[len(ranked) - n_gate :])


def hardest_split(warm: Sequence[Case], mined: Sequence[Case], cfg: MethodConfig) -> tuple[list[Case], list[Case]]:
    """`gate.split = hardest_train`: the hardest warm turns train, the easiest form B.

    At most `lora.top_warm` turns train and at least one turn (up to `gate.acceptance_size`)
    gates; the training set takes the mined cases of its own turns only, so B shares no context
    with anything the adapter saw. B holds the warm pairs of its turns, and their mined cases
    too when `gate.mined_in_acceptance` is set.
    """
    ranked = sorted(warm, key=lambda c: (-c.hardness, c.turn))
    train_turns, gate_turns = hardest_turns([c.hardness for c in warm], cfg)
    training = [c for c in ranked if c.turn in train_turns] + [c for c in mined if c.turn in train_turns]
    acceptance = [c for c in warm if c.turn in gate_turns]
    if cfg.gate.mined_in_acceptance:
        acceptance += [c for c in mined if c.turn in gate_turns]
    return training, acceptance


def training_split(
    variant: Variant, warm: Sequence[Case], mined: Sequence[Case], cfg: MethodConfig, seed: int
) -> tuple[list[Case], list[Case]]:
    """(training set H, acceptance batch B), deterministic in the seed; never a turn in both."""
    if variant.gate == "in_sample_threshold":
        return [*warm, *mined], [*warm, *mined]
    if cfg.gate.split == "hardest_train":
        training, acceptance = hardest_split(warm, mined, cfg)
    else:
        if cfg.gate.mined_in_acceptance and cfg.gate.split == "random":  # the paper's pooled B, by turn
            pool = [*warm, *mined]
            rest, acceptance = split_acceptance(pool, cfg.gate.acceptance_size, random.Random(seed), min_training=1)
            gate_turns = {c.turn for c in acceptance}
        else:  # B's turns as the mining job chose them (warm_gate_turns), with their mined cases if asked
            gate_turns = warm_gate_turns(len(warm), cfg, seed)
            acceptance = [c for c in warm if c.turn in gate_turns]
            if cfg.gate.mined_in_acceptance:
                acceptance += [c for c in mined if c.turn in gate_turns]
            rest = [c for c in warm if c.turn not in gate_turns]
        rest_warm = sorted((c for c in rest if c.source == "warm"), key=lambda c: c.hardness, reverse=True)
        kept = rest_warm[: cfg.lora.top_warm]
        training = kept + [c for c in mined if c.turn not in gate_turns]
    assert not {c.turn for c in training} & {c.turn for c in acceptance}
    return training, acceptance


def training_stage(
    variant: Variant,
    warm: Sequence[Case],
    mined: Sequence[Case],
    *,
    surrogate: Surrogate,
    cfg: MethodConfig,
    adapter: str,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> TrainedStage:
    """Hold out the acceptance batch (whole turns), then train a fresh adapter on the rest."""
    training, acceptance = training_split(variant, warm, mined, cfg, seed)
    report = lora_train.train(
        surrogate.adapters,
        adapter,
        surrogate.tokenizer,
        [p for c in training for p in c.pairs(cfg.lora.context)],
        cfg.lora,
        seed=seed,
        progress=progress,
    )
    return TrainedStage(adapter, training, acceptance, report, report.seconds)


def gate_answer_tokens(tokenizer: Any, acceptance: Sequence[Case], cfg: MethodConfig, serve_tokens: int) -> int:
    """How long G answers on B: `gate.answer_tokens` if set; else, with `gate.answer_length = teacher`,
    as long as F's longest answer there (in G's tokens, at least 16), never above `serve_tokens`. A
    session whose answers are short is gated at that length, not at the configured maximum: the part
    of a longer G answer has nothing of F's to be compared with, and generating it is most of the gate's
    time. `gate.score_tokens` N, when set, caps the result at N."""
    if cfg.gate.answer_tokens:
        tokens = cfg.gate.answer_tokens
    elif cfg.gate.answer_length == "served" or not acceptance:
        tokens = serve_tokens
    else:
        longest = max(len(lm.text_ids(tokenizer, c.answer)) for c in acceptance)
        tokens = min(serve_tokens, max(16, longest))
    return min(tokens, cfg.gate.score_tokens) if cfg.gate.score_tokens else tokens


def answer_prefix(tokenizer: Any, text: str, tokens: int) -> str:
    """The first `tokens` tokens of `text` (G's tokenizer), as text; the whole text when it is shorter."""
    ids = lm.text_ids(tokenizer, text)
    if len(ids) <= tokens:
        return text
    return tokenizer.decode(ids[:tokens], skip_special_tokens=True)


def acceptance_answers(
    surrogate: Surrogate, adapter: str, acceptance: Sequence[Case], cfg: MethodConfig, serve_tokens: int = 256
) -> list[tuple[str, str, str]]:
    """(F's answer, base G's answer, adapted G's answer) on each acceptance context: the context the
    adapter is served with, at the length it is served (`gate_answer_tokens`). With `gate.score_tokens`
    N, G answers at most N tokens and F's answer is cut to as many, so both sides of Gap cover the same
    span."""
    conversations = [c.gate_messages(cfg.lora.context) for c in acceptance]
    tokens = gate_answer_tokens(surrogate.tokenizer, acceptance, cfg, serve_tokens)
    answers = [c.answer for c in acceptance]
    if cfg.gate.score_tokens:
        answers = [answer_prefix(surrogate.tokenizer, a, tokens) for a in answers]
    old, new = surrogate.base_and_adapted_answers(adapter, conversations, tokens)
    return [(f, o.text, n.text) for f, o, n in zip(answers, old, new, strict=True)]


def gate_decision(
    variant: Variant,
    examples: Sequence[tuple[str, str, str]],
    gaps: Callable[[list[tuple[str, str]]], list[float]],
    cfg: MethodConfig,
) -> tuple[gate_stats.AcceptDecision, list[float], list[float]]:
    gap_old = gaps([(f, old) for f, old, _ in examples])
    gap_new = gaps([(f, new) for f, _, new in examples])
    if variant.gate == "in_sample_threshold":
        return fixed_threshold_gate(gap_old, gap_new, REFERENCE_THRESHOLD), gap_old, gap_new
    decision = gate_stats.accept(
        gap_old,
        gap_new,
        epsilon=cfg.gate.epsilon,
        delta=cfg.gate.delta,
        bound=cfg.gate.bound,
        max_mean_gap=cfg.gate.max_mean_gap,
    )
    return decision, gap_old, gap_new


def adapt(
    variant: Variant,
    turns: Sequence[WarmTurn],
    *,
    surrogate: Surrogate,
    teacher: VerbalizedTeacher,
    gaps: Callable[[list[tuple[str, str]]], list[float]],
    cfg: MethodConfig,
    adapter: str,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    serve_tokens: int = 256,
) -> AdaptationOutcome:
    """Run the whole chain for one session and leave the trained adapter `adapter` on G."""
    note = progress or (lambda _stage: None)
    note("mining")
    mined = mining_stage(variant, turns, surrogate=surrogate, teacher=teacher, cfg=cfg, seed=seed)
    note("training")
    trained = training_stage(variant, mined.warm, mined.mined, surrogate=surrogate, cfg=cfg, adapter=adapter, seed=seed)
    note("gate")
    t0 = time.perf_counter()
    examples = acceptance_answers(surrogate, adapter, trained.acceptance, cfg, serve_tokens)
    decision, gap_old, gap_new = gate_decision(variant, examples, gaps, cfg)
    seconds = {**mined.seconds, "training": trained.seconds, "gate": time.perf_counter() - t0}
    return AdaptationOutcome(
        variant=variant.name,
        adapter=adapter,
        decision=decision,
        training_keys=[c.key for c in trained.training],
        acceptance_keys=[c.key for c in trained.acceptance],
        seconds=seconds,
        teacher_calls=mined.teacher_calls,
        teacher_tokens=mined.teacher_tokens,
        teacher_prompt_tokens=mined.teacher_prompt_tokens,
        verbalizations=mined.verbalizations,
        training=trained.report,
        gaps_old=gap_old,
        gaps_new=gap_new,
    )


def fixed_threshold_gate(gap_old: list[float], gap_new: list[float], max_gap: float) -> gate_stats.AcceptDecision:
    """The reference code's gate: in-sample mean Gap under a fixed threshold, no bound, no improvement test."""
    mean_new = sum(gap_new) / len(gap_new)
    mean_old = sum(gap_old) / len(gap_old)
    ok = mean_new <= max_gap
    return gate_stats.AcceptDecision(
        accepted=ok,
        mean_improvement=mean_old - mean_new,
        bound=0.0,
        mean_gap_new=mean_new,
        locality=None,
        reason=f"in-sample mean gap {mean_new:.4f} {'<=' if ok else '>'} fixed threshold {max_gap:.2f}",
    )
