"""Typed configuration of the method, with the paper's ranges (Appendix C.2) attached to each knob.

Values are validated for sanity (a negative temperature is an error); values outside the
paper's range are allowed, because a 2-core machine needs smaller budgets than an A100 node,
but `outside_paper_ranges()` lists them so every report can say what it traded.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Hardness = Literal["disagreement", "paper_literal"]
BoundKind = Literal["hoeffding", "bernstein", "none"]
Placement = Literal["first_message", "system"]
TrainContext = Literal["served", "full", "both"]
Split = Literal["hardest_train", "random", "recent_train"]
SummaryPlace = Literal["first_user", "system"]
AnswerLength = Literal["teacher", "served"]


def _paper(low: float | None = None, high: float | None = None, choices: tuple | None = None) -> dict[str, Any]:
    return {"paper": {"low": low, "high": high, "choices": choices}}


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MiningConfig(_Frozen):
    """Stage 1: soft-prompt mining (Eq. 1-3)."""

    prompt_length: int = Field(
        8,
        ge=1,
        le=256,
        json_schema_extra=_paper(choices=(4, 8, 16, 32, 64)),
        description="L: rows of the soft prompt P",
    )
    candidates: int = Field(
        3, ge=1, le=16, json_schema_extra=_paper(choices=(3, 4, 5)), description="M: prompts mined at once (one batch)"
    )
    init_sigma: float = Field(0.02, gt=0, description="rows of P start from N(0, σ²I)")
    steps: int = Field(
        4,
        ge=0,
        le=10_000,
        description="AdamW steps on P; 0: no search, hardness is G's loss on F's answer under the initial P",
    )
    lr: float = Field(
        5e-3, gt=0, json_schema_extra=_paper(1e-4, 5e-3), description="η: AdamW learning rate on P (cosine decay to 0)"
    )
    weight_decay: float = Field(1e-2, ge=0, json_schema_extra=_paper(0.0, 1e-2), description="λ_wd: AdamW weight decay")
    clip: float = Field(1.0, gt=0, json_schema_extra=_paper(0.5, 1.0), description="gradient-norm clip per candidate")
    neighbours: int = Field(
        20,
        ge=1,
        json_schema_extra=_paper(choices=(20, 50, 100)),
        description="k: size of the semantic neighbourhood N_k",
    )
    tau: float = Field(0.7, gt=0, json_schema_extra=_paper(0.4, 1.2), description="τ: temperature of s_τ")
    top_m: int = Field(
        50, ge=1, json_schema_extra=_paper(choices=(50, 100, 200)), description="m: truncation of the expectation ē"
    )
    lam: float = Field(1.0, ge=0, json_schema_extra=_paper(0.5, 2.0), description="λ: expectation weight strength")
    beta: float = Field(
        0.05,
        ge=0,
        json_schema_extra=_paper(0.02, 0.15),
        description="β: anti-degeneration (tail entropy) weight; 0 for soma-no-antidegen",
    )
    lambda_p: float = Field(1e-4, ge=0, description="‖P‖² weight")
    tail: int = Field(8, ge=1, description="answer positions whose entropy H_tail covers")
    use_expectation_weight: bool = Field(True, description="Eq. 2 weight; off for the soma-no-expweight ablation")
    max_context_tokens: int = Field(128, ge=8, description="S_t is cut to its last N tokens for mining")
    max_answer_tokens: int = Field(32, ge=1, description="teacher answer tokens y scored per turn")
    mined_pairs: int = Field(4, ge=0, le=256, description="(candidate, turn) cases sent to the teacher under V(P)")
    mined_answer_tokens: int = Field(
        0,
        ge=0,
        description="F's answer budget for a mined case; 0: as long as the session's longest warm answer (G tokens)",
    )
    placement: Placement = Field(
        "system",
        description="where V(P) goes in F's context: system (its own system line; the user's words stay intact) "
        "or first_message (prepended to the first non-system message, as the paper's code does)",
    )


class LoraConfig(_Frozen):
    """Stage 2: localized LoRA (Eq. 4)."""

    rank: int = Field(8, ge=1, le=256, json_schema_extra=_paper(choices=(4, 8, 16, 32)), description="r: LoRA rank")
    alpha: int = Field(16, ge=1, json_schema_extra=_paper(choices=(4, 8, 16, 32)), description="α_lora: LoRA scale")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout")
    target_modules: tuple[str, ...] = Field(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        description="projections that get LoRA (Llama/Qwen names)",
    )
    lr: float = Field(
        1e-3, gt=0, json_schema_extra=_paper(5e-5, 2e-3), description="η_lora: AdamW learning rate (cosine decay)"
    )
    steps: int = Field(6, ge=1, le=100_000, description="optimizer steps (early stopping may end sooner)")
    batch_size: int = Field(4, ge=1, description="examples per step")
    max_tokens: int = Field(256, ge=16, description="context + answer tokens per example (oldest context cut)")
    holdout_fraction: float = Field(0.2, ge=0, lt=1, description="share of H held out for early stopping")
    eval_every: int = Field(2, ge=1, description="steps between held-out evaluations")
    patience: int = Field(2, ge=1, description="evaluations without improvement before stopping")
    top_warm: int = Field(8, ge=1, description="|H| warm turns kept, highest hardness first")
    context: TrainContext = Field(
        "served",
        description="what a training pair's context is: served (S̃_t ⊕ q_t, what the adapter will be served: "
        "context distillation), full (the whole history, as the paper trains) or both",
    )
    hardness: Hardness = Field(
        "disagreement",
        description="r_t: disagreement (F-token NLL under the mined P; high = weak) or paper_literal (max_P L_sem_exp)",
    )


class GateConfig(_Frozen):
    """Stage 3: the acceptance test (Thm 4.2) with fidelity and locality gates."""

    acceptance_size: int = Field(
        2,
        ge=1,
        json_schema_extra=_paper(6, 24),
        description="|B|: warm turns that gate (whole turns; warm cases only unless gate.mined_in_acceptance)",
    )
    epsilon: float = Field(
        0.05,
        ge=-1,
        le=2,
        json_schema_extra=_paper(0.05, 0.12),
        description="ε: required mean improvement of Gap (below 0: an adapter that much worse than G still passes)",
    )
    delta: float = Field(0.1, gt=0, lt=1, description="δ: confidence level of γ_B(δ)")
    bound: BoundKind = Field(
        "none",
        json_schema_extra=_paper(choices=("hoeffding",)),
        description="γ_B(δ): hoeffding (Thm 4.2), bernstein, or none; any bound needs |B| ≫ 6 to ever pass",
    )
    max_mean_gap: float = Field(0.6, ge=0, le=2, description="fidelity gate on mean Gap_new; 0 turns it off")
    min_locality: float = Field(0.15, ge=-1, le=1, description="locality gate: cos(query, warm centroid)")
    answer_tokens: int = Field(
        0, ge=0, description="surrogate answer length when measuring Gap on B; 0: set by gate.answer_length"
    )
    answer_length: AnswerLength = Field(
        "teacher",
        description="with answer_tokens 0: teacher (as long as F's longest answer on B, at most the length the "
        "product serves: this session's answers, never more) or served (the configured max new tokens)",
    )
    score_tokens: int = Field(
        0,
        ge=0,
        description="score only the first N tokens (G's tokenizer) of both answers on B: G answers at most N, "
        "F's answer is cut to as many; bounds the gate's time by N instead of F's answer length. 0: whole answers",
    )
    split: Split = Field(
        "random",
        description="which warm turns gate: random (B drawn at random; the hardest top_warm of the rest train; "
        "chosen by soma bench recipe, docs/bench/recipe), hardest_train (the hardest turns train, the easiest gate) "
        "or recent_train (the oldest turns gate, the hardest top_warm of the more recent ones train)",
    )
    mined_in_acceptance: bool = Field(False, description="mined cases may be scored in B (beside warm turns)")


class DriftConfig(_Frozen):
    consecutive: int = Field(
        2, ge=1, json_schema_extra=_paper(choices=(2, 3)), description="m_cons: failed turns in a row that roll back"
    )
    window: int = Field(8, ge=1, description="moving window of turn checks")
    min_locality: float = Field(0.25, ge=-1, le=1, description="drift check: cos(query, warm centroid)")
    shadow_fraction: float = Field(0.0, ge=0, le=1, description="share of surrogate turns given a shadow F answer")
    max_shadow_gap: float = Field(0.6, ge=0, le=2, description="a shadow Gap above this fails the turn")

    @model_validator(mode="after")
    def _window(self) -> DriftConfig:
        if self.window < self.consecutive:
            raise ValueError(f"drift.window ({self.window}) must be ≥ drift.consecutive ({self.consecutive})")
        return self


class CompressionConfig(_Frozen):
    recent_turns: int = Field(2, ge=0, description="K: last turns kept verbatim in S̃_t")
    summary_chars: int = Field(600, ge=0, description="budget of the summary of older turns")
    summary: Literal["extractive", "teacher"] = Field(
        "extractive", description="extractive (central sentences, no model call) or written by the teacher"
    )
    place: SummaryPlace = Field(
        "first_user",
        description="where the summary goes: first_user (a note before the first kept user message, so G keeps its "
        "own system prompt) or system (a system message, replacing G's default one)",
    )
    max_summarized_turns: int = Field(
        64, ge=1, description="older turns the summary reads, most recent first: bounds its cost at any history length"
    )


class MethodConfig(_Frozen):
    warm_turns: int = Field(
        4, ge=1, json_schema_extra=_paper(3, 12), description="W: teacher turns before adaptation starts"
    )
    mining: MiningConfig = MiningConfig()
    lora: LoraConfig = LoraConfig()
    gate: GateConfig = GateConfig()
    drift: DriftConfig = DriftConfig()
    compression: CompressionConfig = CompressionConfig()

    def with_changes(self, changes: dict[str, Any]) -> MethodConfig:
        """A copy with dotted-key changes ({'mining.steps': 4}), validated again."""
        data = self.model_dump()
        for key, value in changes.items():
            node = data
            *parents, leaf = key.split(".")
            for part in parents:
                if part not in node or not isinstance(node[part], dict):
                    raise ValueError(f"unknown method setting {key!r}")
                node = node[part]
            if leaf not in node:
                raise ValueError(f"unknown method setting {key!r}")
            node[leaf] = value
        return MethodConfig.model_validate(data)

    def outside_paper_ranges(self) -> list[str]:
        """'section.knob = value (paper: …)' for every knob set outside Appendix C.2's ranges."""
        found = []
        for section_name in ("mining", "lora", "gate", "drift", "compression"):
            section = getattr(self, section_name)
            found += _outside(section_name, section)
        found += _outside("", self)
        return found


def _outside(prefix: str, section: BaseModel) -> list[str]:
    out = []
    for name, info in type(section).model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        rule = extra.get("paper")
        if not rule:
            continue
        value = getattr(section, name)
        low, high, choices = rule["low"], rule["high"], rule["choices"]
        if choices is not None and value not in choices:
            out.append(f"{prefix + '.' if prefix else ''}{name} = {value} (paper: one of {list(choices)})")
        elif choices is None and ((low is not None and value < low) or (high is not None and value > high)):
            out.append(f"{prefix + '.' if prefix else ''}{name} = {value} (paper: {low}..{high})")
    return out


# Budgets: what runs where. `cpu` is tuned so W=4 adaptation fits about a minute on 2 cores;
# `paper` uses mid-range values of Appendix C.2 for a GPU node; `tiny` exists for tests.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "warm_turns": 2,
        "mining.steps": 1,
        "mining.candidates": 2,
        "mining.prompt_length": 2,
        "mining.mined_pairs": 2,
        "mining.max_context_tokens": 64,
        "mining.max_answer_tokens": 8,
        "lora.steps": 1,
        "lora.batch_size": 2,
        "lora.max_tokens": 96,
        "gate.acceptance_size": 2,
        "gate.answer_tokens": 8,
    },
    # the recipe ablations (docs/bench/recipe, round 2) found that neither mined pairs nor the soft-prompt
    # search changes the adapted G's fidelity at W = 4, while they cost F calls and most of the adaptation
    # time; hardness is then G's loss on F's answer under one unsearched near-zero prompt, so one
    # candidate does (more would score the same turns again). With |B| = 2 the gate asks for a mean
    # improvement of 0.02, below the paper's 0.05: in round 2's gate replay on the tuning set, every
    # adapter that cleared 0.02 beat base-served after the switch (10 of 20 accepted, against 6 at
    # 0.05; round 1's older recipes did worse at 0.02). `paper` keeps the paper's full chain and ε.
    # The gate scores the first 64 tokens of both answers (`gate.score_tokens`): on the report set it cut
    # the gate from 33.8 to 16.7 s mean (adaptation 63.1 -> 38.9 s, target 60; LoRA, unchanged, also ran
    # 6 s faster in that run) with 18 of 40 generation-1 acceptances, as before, 2 of them flipped
    # (docs/bench/fidelity-report); on the tuning set it agreed with whole answers on 11 of 12
    # decisions (docs/bench/recipe/gate-prefix).
    "cpu": {
        "mining.mined_pairs": 0,
        "mining.steps": 0,
        "mining.candidates": 1,
        "gate.epsilon": 0.02,
        "gate.score_tokens": 64,
    },
    "paper": {
        # W = 12 so the hardest 6 warm turns train and the other 6 gate (|B| = 6, Appendix C.2's low end)
        "warm_turns": 12,
        "mining.prompt_length": 16,
        "mining.candidates": 4,
        "mining.steps": 50,
        "mining.lr": 1e-3,
        "mining.neighbours": 50,
        "mining.top_m": 100,
        "mining.max_context_tokens": 2048,
        "mining.max_answer_tokens": 256,
        "mining.mined_pairs": 16,
        "lora.rank": 16,
        "lora.alpha": 32,
        "lora.lr": 2e-4,
        "lora.steps": 200,
        "lora.batch_size": 8,
        "lora.max_tokens": 2560,
        "lora.top_warm": 6,
        "gate.acceptance_size": 6,
        "gate.bound": "hoeffding",
        "gate.answer_tokens": 256,
    },
}


def preset(name: str) -> MethodConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown budget {name!r}; choose one of {', '.join(PRESETS)}")
    return MethodConfig().with_changes(PRESETS[name])
