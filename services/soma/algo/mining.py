"""Stage 1: mine M soft prompts at once against the frozen surrogate G (paper Eq. 1-3).

All M candidates × W warm turns form one right-padded batch: row (m, t) is
P_m ⊕_emb E(tok_G(S_t)) ⊕ E(y_t), with y_t = tok_G(a_t^F). Each step computes J(P_m) for
every candidate (their sum is minimised; the candidates share no parameters, so each gets its
own gradient), clips each candidate's gradient to `clip`, and steps AdamW under cosine decay.
G's weights never receive a gradient.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from soma.algo import lm, mining_loss, neighbourhood, soft_prompt
from soma.algo.config import MiningConfig
from soma.algo.teacher_client import Message


@dataclass(frozen=True)
class WarmTurn:
    """One warm-start turn: S_t as chat messages (full history + query) and F's answer a_t^F.

    `served` is S̃_t, the compressed context the surrogate would be served at this turn (empty:
    not known, the full S_t stands in): what the adapter trains and is gated on.
    """

    messages: tuple[Message, ...]
    answer: str
    ended: bool = True  # F stopped on its own (False: cut by the token budget)
    served: tuple[Message, ...] = ()

    @property
    def served_messages(self) -> tuple[Message, ...]:
        return self.served or self.messages


@dataclass(frozen=True)
class MinedCase:
    candidate: int
    turn: int
    verbalization: str
    disagreement: float  # mean NLL of F's answer tokens under P (high = weak alignment)
    sem_exp: float  # L_sem_exp under P (the paper's literal hardness term)


@dataclass
class MiningResult:
    prompts: torch.Tensor  # [M, L, d]
    verbalizations: list[str]
    cases: list[MinedCase]
    objective: list[float] = field(default_factory=list)  # Σ_m J(P_m) per step
    seconds: float = 0.0

    def turn_hardness(self, kind: str, turns: int) -> list[float]:
        """r_t per warm turn: the largest score over the candidates (max_P, as the paper writes)."""
        scores = [-math.inf] * turns
        for case in self.cases:
            value = case.disagreement if kind == "disagreement" else case.sem_exp
            scores[case.turn] = max(scores[case.turn], value)
        return [0.0 if s == -math.inf else s for s in scores]


@dataclass(frozen=True)
class _Encoded:
    context: list[int]
    answer: list[int]


def encode_turns(tokenizer: Any, turns: Sequence[WarmTurn], cfg: MiningConfig) -> list[_Encoded]:
    out = []
    for turn in turns:
        context = lm.chat_ids(tokenizer, turn.messages)[-cfg.max_context_tokens :]
        answer = lm.text_ids(tokenizer, turn.answer)[: cfg.max_answer_tokens]
        if not answer:
            answer = [int(tokenizer.eos_token_id)]
        out.append(_Encoded(context, answer))
    return out


def _batch(encoded: list[_Encoded], candidates: int, length: int, emb: torch.Tensor):
    """Token embeddings of every (m, t) row after the prompt slot, the mask and answer positions."""
    rows = [(m, t) for m in range(candidates) for t in range(len(encoded))]
    width = length + max(len(e.context) + len(e.answer) for e in encoded)
    dim = emb.shape[1]
    tokens = torch.zeros(len(rows), width - length, dim, dtype=emb.dtype)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    pos_rows, pos_cols, spans = [], [], []
    for r, (_, t) in enumerate(rows):
        e = encoded[t]
        ids = torch.tensor(e.context + e.answer)
        tokens[r, : len(ids)] = emb[ids]
        mask[r, : length + len(ids)] = 1
        first = length + len(e.context) - 1  # logits here predict the first answer token
        start = len(pos_rows)
        pos_rows += [r] * len(e.answer)
        pos_cols += list(range(first, first + len(e.answer)))
        spans.append((start, len(pos_rows)))
    return rows, tokens, mask, torch.tensor(pos_rows), torch.tensor(pos_cols), spans


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufffd]|<\||\|>")


def clean_verbalization(text: str) -> str:
    """V(P) as text F may receive: no control characters, broken UTF-8 or chat-role markers."""
    return " ".join(_CONTROL.sub("", text).split())


def _clip_per_candidate(grad: torch.Tensor, max_norm: float) -> None:
    norms = grad.flatten(1).norm(dim=1).clamp(min=1e-12)
    grad.mul_((max_norm / norms).clamp(max=1.0)[:, None, None])


def mine(
    model: Any,
    tokenizer: Any,
    turns: Sequence[WarmTurn],
    neighbours: torch.Tensor,
    cfg: MiningConfig,
    *,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> MiningResult:
    """Mine cfg.candidates soft prompts on the warm turns; G stays frozen."""
    if not turns:
        raise ValueError("mining needs at least one warm-start turn")
    t0 = time.perf_counter()
    emb_table = lm.input_embeddings(model).detach()
    encoded = encode_turns(tokenizer, turns, cfg)
    rows, tokens, mask, pos_r, pos_c, spans = _batch(encoded, cfg.candidates, cfg.prompt_length, emb_table)
    targets = [torch.tensor(e.answer) for e in encoded]
    weights = [neighbourhood.neighbourhood_weights(emb_table, y, neighbours, cfg.tau) for y in targets]
    emb_f = emb_table.float()

    generator = torch.Generator().manual_seed(seed)
    dim = emb_table.shape[1]
    prompts = torch.nn.Parameter(
        soft_prompt.init_prompts(cfg.candidates, cfg.prompt_length, dim, cfg.init_sigma, generator)
    )
    optimizer = torch.optim.AdamW([prompts], lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.steps)
    beta = cfg.beta

    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)

    def terms_of(logits: torch.Tensor) -> list[list[mining_loss.TurnTerms]]:
        per_candidate: list[list[mining_loss.TurnTerms]] = [[] for _ in range(cfg.candidates)]
        for r, (m, t) in enumerate(rows):
            a, b = spans[r]
            ids, w = weights[t]
            per_candidate[m].append(
                mining_loss.turn_terms(
                    logits[a:b],
                    targets[t],
                    emb_f,
                    ids,
                    w,
                    top_m=cfg.top_m,
                    lam=cfg.lam,
                    tail=cfg.tail,
                    use_expectation_weight=cfg.use_expectation_weight,
                )
            )
        return per_candidate

    def forward() -> torch.Tensor:
        row_prompts = prompts[[m for m, _ in rows]]  # [R, L, d]
        inputs = torch.cat([row_prompts.to(tokens.dtype), tokens], dim=1)
        return lm.logits_at(model, inputs, mask, pos_r, pos_c)

    history = []
    was_training = model.training
    model.eval()
    try:
        for step in range(cfg.steps):
            optimizer.zero_grad(set_to_none=True)
            per_candidate = terms_of(forward())
            total = sum(
                mining_loss.objective(per_candidate[m], prompts[m], beta=beta, lambda_p=cfg.lambda_p)
                for m in range(cfg.candidates)
            )
            total.backward()
            _clip_per_candidate(prompts.grad, cfg.clip)
            optimizer.step()
            schedule.step()
            value = float(total.detach())
            history.append(value)
            if progress:
                progress(step + 1, value)
        with torch.no_grad():
            logits = forward()
            per_candidate = terms_of(logits)
            log_probs = torch.log_softmax(logits.float(), dim=-1)
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
        model.train(was_training)

    exclude = lm.special_ids(tokenizer)
    verbalizations = [
        clean_verbalization(tokenizer.decode(soft_prompt.verbalize_ids(prompts[m], emb_table, exclude).tolist()))
        for m in range(cfg.candidates)
    ]
    cases = []
    for r, (m, t) in enumerate(rows):
        a, b = spans[r]
        nll = -log_probs[a:b].gather(-1, targets[t][:, None]).mean()
        # rows run candidate-major, turn-minor, so per_candidate[m][t] is this row's terms
        cases.append(MinedCase(m, t, verbalizations[m], float(nll), float(per_candidate[m][t].sem_exp)))
    return MiningResult(prompts.detach().clone(), verbalizations, cases, history, time.perf_counter() - t0)
