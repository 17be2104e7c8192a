"""One dialogue through every method of the fidelity benchmark (paper C.3 protocol).

- original: F answers every turn with its own full history; this transcript O is the reference.
- surrogate: G answers every turn with its own full history.
- every other method answers each post-switch turn t = W+1..T given O up to t−1, so all answers
  are paired per turn with O's answer at t:
  history-prefix (base G, full O history), history-ft (LoRA on the warm (S_t, a_t^F) pairs, full
  history), random-ft (SOMA's LoRA budget on uniformly sampled warm turns, compressed prefix),
  soma and its ablations (the adaptation chain, compressed prefix S̃_t), router (decided later,
  from history-prefix's confidence, calibrated across the whole run).

SOMA variants are also run as a live session would run them: the `soma.session` state machine,
the gate (with the locality gate at turn W+1) and the drift monitor decide which model serves
each turn ("served" answers: G's while switched, O's otherwise).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from soma.algo import gate_stats
from soma.algo.adaptation import VARIANTS, adapt
from soma.algo.compression import compressed_messages, teacher_summary
from soma.algo.config import MethodConfig
from soma.algo.drift import DriftMonitor, TurnCheck
from soma.algo.lora_train import TrainingPair, train
from soma.algo.mining import WarmTurn
from soma.algo.teacher_client import VerbalizedTeacher
from soma.bench.dialogues import Dialogue
from soma.bench.pair import BackendTeacher, LoadedPair
from soma.models.chat_backend import SamplingParams
from soma.session import machine
from soma.session.records import Phase

SOMA_VARIANTS = ("soma", "soma-no-antidegen", "soma-no-expweight", "soma-ref")


@dataclass
class RunOptions:
    cfg: MethodConfig
    methods: tuple[str, ...]
    answer_tokens: int
    seed: int
    topic_shift: bool = False
    shift_turns: int = 3


@dataclass
class DialogueRun:
    pair: LoadedPair
    options: RunOptions
    note: Callable[[str], None] = field(default=lambda _s: None)

    # -- helpers -----------------------------------------------------------------------------------

    def _teacher_answer(self, messages: list[dict]) -> dict:
        o = self.pair.teacher.generate(messages, SamplingParams(max_new_tokens=self.options.answer_tokens))
        return {
            "answer": o.text,
            "prompt_tokens": o.prompt_tokens,
            "completion_tokens": o.completion_tokens,
            "finish_reason": o.finish_reason,
        }

    def _surrogate_batch(self, adapter: str | None, conversations: list[list[dict]], **kw) -> list[Any]:
        return self.pair.surrogate.answers(adapter, conversations, self.options.answer_tokens, **kw)

    def _compressed(self, history: list[tuple[str, str]], query: str) -> list[dict]:
        c = self.options.cfg.compression
        summarize = None
        if c.summary == "teacher":
            params = SamplingParams(max_new_tokens=max(16, c.summary_chars // 3))

            def summarize(older, budget):
                complete = lambda msgs: self.pair.teacher.generate(msgs, params).text  # noqa: E731
                return teacher_summary(older, complete, budget)

        return compressed_messages(
            history,
            query,
            recent_turns=c.recent_turns,
            summary_chars=c.summary_chars,
            encode=self.pair.encoder.encode,
            summarize=summarize,
        )

    # -- the run -----------------------------------------------------------------------------------

    def run(self, dialogue: Dialogue, index: int, shift_queries: tuple[str, ...] = ()) -> dict:
        opts, cfg = self.options, self.options.cfg
        seed = opts.seed * 100_003 + index
        queries = list(dialogue.queries)
        warm_n = min(cfg.warm_turns, len(queries) - 1)
        post = list(range(warm_n, len(queries)))  # 0-based indices of post-switch turns
        out: dict[str, Any] = {
            "id": dialogue.id,
            "task": dialogue.task,
            "turns": len(queries),
            "warm_turns": warm_n,
            "post_turns": [t + 1 for t in post],
            "answers": {},
            "tokens": {},
            "adaptation": {},
            "seconds": {},
        }

        # original: F with its own full history, every turn
        self.note("original")
        t0 = time.perf_counter()
        history: list[dict] = []
        original = []
        for q in queries:
            messages = [*history, {"role": "user", "content": q}]
            original.append(self._teacher_answer(messages))
            history = [*messages, {"role": "assistant", "content": original[-1]["answer"]}]
        out["seconds"]["original"] = time.perf_counter() - t0
        out["original"] = original
        out["answers"]["original"] = {str(t + 1): original[t]["answer"] for t in post}
        out["tokens"]["original"] = _tokens(teacher=[original[t] for t in post])
        pairs_o = [(q, o["answer"]) for q, o in zip(queries, original, strict=True)]

        def full_context(t: int) -> list[dict]:
            msgs: list[dict] = []
            for q, a in pairs_o[:t]:
                msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            return [*msgs, {"role": "user", "content": queries[t]}]

        warm = [
            WarmTurn(tuple(full_context(t)), original[t]["answer"], original[t]["finish_reason"] == "stop")
            for t in range(warm_n)
        ]
        full_post = [full_context(t) for t in post]
        compressed_post = [self._compressed(pairs_o[:t], queries[t]) for t in post]
        wanted = set(opts.methods)

        if "surrogate" in wanted:
            self.note("surrogate")
            t0 = time.perf_counter()
            history, answers = [], []
            for q in queries:
                messages = [*history, {"role": "user", "content": q}]
                o = self._surrogate_batch(None, [messages])[0]
                answers.append(o)
                history = [*messages, {"role": "assistant", "content": o.text}]
            out["seconds"]["surrogate"] = time.perf_counter() - t0
            out["answers"]["surrogate"] = {str(t + 1): answers[t].text for t in post}
            out["tokens"]["surrogate"] = _tokens(surrogate=[_outcome(answers[t]) for t in post])

        if wanted & {"history-prefix", "router"}:
            self.note("history-prefix")
            outs = self._surrogate_batch(None, full_post, with_logprobs=True)
            out["answers"]["history-prefix"] = {str(t + 1): o.text for t, o in zip(post, outs, strict=True)}
            out["tokens"]["history-prefix"] = _tokens(surrogate=[_outcome(o) for o in outs])
            out["router_confidence"] = {str(t + 1): o.mean_logprob for t, o in zip(post, outs, strict=True)}

        if "history-ft" in wanted:
            self.note("history-ft")
            pairs = [TrainingPair(w.messages, w.answer, ended=w.ended) for w in warm]
            self._fine_tuned("history-ft", pairs, full_post, post, seed, out)

        encoder = self.pair.encoder
        warm_emb = encoder.encode([q for q in queries[:warm_n]])
        locality = [gate_stats.locality(e, warm_emb) for e in encoder.encode(queries)]
        out["locality"] = locality
        training_size = None
        for name in [m for m in SOMA_VARIANTS if m in wanted]:
            self.note(name)
            teacher = VerbalizedTeacher(BackendTeacher(self.pair.teacher))  # per variant: honest call counts
            outcome = adapt(
                VARIANTS[name],
                warm,
                surrogate=self.pair.surrogate,
                teacher=teacher,
                gaps=encoder.gaps,
                cfg=cfg,
                adapter=name,
                seed=seed,
            )
            if name == "soma":
                training_size = sum(1 for k in outcome.training_keys if k.startswith("warm:"))
            outs = self._surrogate_batch(name, compressed_post)
            forced = [o.text for o in outs]
            out["answers"][name] = {str(t + 1): a for t, a in zip(post, forced, strict=True)}
            session = self._live_session(name, outcome, post, forced, original, locality, warm_n, seed)
            out["answers"][f"{name}@served"] = session.pop("served")
            served_by = session["served_by"]
            out["tokens"][name] = _tokens(
                surrogate=[_outcome(o) for o in outs], adaptation_teacher=outcome.teacher_tokens
            )
            out["tokens"][f"{name}@served"] = _tokens(
                surrogate=[_outcome(o) for o, by in zip(outs, served_by, strict=True) if by == "surrogate"],
                teacher=[original[t] for t, by in zip(post, served_by, strict=True) if by == "teacher"],
                adaptation_teacher=outcome.teacher_tokens,
            )
            out["adaptation"][name] = {
                "seconds": outcome.seconds,
                "teacher_calls": outcome.teacher_calls,
                "accepted": outcome.decision.accepted,
                "decision": outcome.decision.reason,
                "mean_improvement": outcome.decision.mean_improvement,
                "bound": outcome.decision.bound,
                "mean_gap_new": outcome.decision.mean_gap_new,
                "gaps_old": outcome.gaps_old,
                "gaps_new": outcome.gaps_new,
                "training_keys": outcome.training_keys,
                "acceptance_keys": outcome.acceptance_keys,
                "verbalizations": outcome.verbalizations,
                "training": _report(outcome.training),
                **session,
            }
            if name == "soma" and opts.topic_shift:
                out["topic_shift"] = self._topic_shift(locality, warm_emb, shift_queries, post)
                out["topic_shift"]["switched"] = session["switch_turn"] is not None
            self.pair.surrogate.adapters.delete(name)

        if "random-ft" in wanted:
            self.note("random-ft")
            rng = random.Random(seed + 7)
            # SOMA's budget (same steps, as many warm turns as SOMA trained on) on turns drawn uniformly,
            # without replacement (a duplicate could land in the early-stopping holdout), no mining
            size = min(warm_n, training_size or warm_n)
            pairs = [
                TrainingPair(warm[i].messages, warm[i].answer, ended=warm[i].ended)
                for i in sorted(rng.sample(range(warm_n), size))
            ]
            self._fine_tuned("random-ft", pairs, compressed_post, post, seed, out)
        return out

    def _fine_tuned(self, name: str, pairs, contexts, post, seed: int, out: dict) -> None:
        """A LoRA baseline: train adapter `name` on pairs (uniform weights), answer every post-switch turn."""
        report = train(
            self.pair.surrogate.adapters,
            name,
            self.pair.surrogate.tokenizer,
            pairs,
            self.options.cfg.lora,
            weighted=False,
            seed=seed,
        )
        outs = self._surrogate_batch(name, contexts)
        out["answers"][name] = {str(t + 1): o.text for t, o in zip(post, outs, strict=True)}
        out["tokens"][name] = _tokens(surrogate=[_outcome(o) for o in outs])
        out["adaptation"][name] = {"seconds": {"training": report.seconds}, "training": _report(report)}
        self.pair.surrogate.adapters.delete(name)

    def _live_session(self, name, outcome, post, forced, original, locality, warm_n, seed) -> dict:
        """Drive soma.session + the drift monitor over the post-switch turns; who serves each turn."""
        cfg = self.options.cfg
        policy = machine.Policy(warm_turns=warm_n, rewarm_turns=10_000, max_attempts=1)
        state = machine.Adaptation()
        for turn in range(1, warm_n + 1):
            state = machine.on_turn_served(state, turn, True, policy)
        state = machine.on_training_done(state, state.generation)
        first_locality = locality[post[0]] if post else 1.0
        local_ok = first_locality >= cfg.gate.min_locality
        accepted = outcome.decision.accepted and local_ok
        reason = outcome.decision.reason + f"; locality {first_locality:.3f} vs {cfg.gate.min_locality:.2f}"
        state = machine.on_gate_decision(state, state.generation, accepted, reason, policy)
        monitor = DriftMonitor(cfg.drift.consecutive, cfg.drift.window)
        rng = random.Random(seed + 11)
        served, served_by, pending_gap = {}, [], None
        switch_turn = rollback_turn = None
        for t, answer in zip(post, forced, strict=True):
            if state.phase is Phase.SURROGATE:
                check = TurnCheck(
                    locality[t],
                    locality[t] >= cfg.drift.min_locality,
                    pending_gap,
                    pending_gap is None or pending_gap <= cfg.drift.max_shadow_gap,
                )
                pending_gap = None
                if monitor.observe(check):
                    state = machine.on_drift(state, f"{cfg.drift.consecutive} failed checks in a row at turn {t + 1}")
                    rollback_turn = t + 1
            if state.phase is Phase.SURROGATE:
                switch_turn = switch_turn or t + 1
                served[str(t + 1)] = answer
                served_by.append("surrogate")
                if rng.random() < cfg.drift.shadow_fraction:  # shadow F answer, off the critical path
                    pending_gap = self.pair.encoder.gaps([(original[t]["answer"], answer)])[0]
            else:
                served[str(t + 1)] = original[t]["answer"]
                served_by.append("teacher")
        return {
            "served": served,
            "served_by": served_by,
            "switch_turn": switch_turn,
            "rollback_turn": rollback_turn,
            "phase": state.phase.value,
            "transitions": [f"{x.source.value}->{x.target.value}: {x.reason}" for x in state.history],
        }

    def _topic_shift(self, locality, warm_emb, shift_queries, post) -> dict:
        """Drift monitor on the dialogue's own tail and on another dialogue's tail spliced after W."""
        cfg = self.options.cfg

        def rolls_back(values: list[float]) -> bool:
            monitor = DriftMonitor(cfg.drift.consecutive, cfg.drift.window)
            fired = False
            for v in values:
                fired = monitor.observe(TurnCheck(v, v >= cfg.drift.min_locality)) or fired
            return fired

        own_values = [locality[t] for t in post]  # computed once for the whole dialogue
        shift_values = (
            [gate_stats.locality(e, warm_emb) for e in self.pair.encoder.encode(list(shift_queries))]
            if shift_queries
            else []
        )
        own, shifted = rolls_back(own_values), rolls_back(shift_values)
        return {
            "own_tail_rolled_back": own,
            "own_tail_locality": own_values,
            "shifted_tail_rolled_back": shifted,
            "shifted_tail_locality": shift_values,
        }


def _outcome(o: Any) -> dict:
    return {"prompt_tokens": o.prompt_tokens, "completion_tokens": o.completion_tokens}


def _tokens(*, teacher=(), surrogate=(), adaptation_teacher: int = 0) -> dict:
    return {
        "teacher_prompt": sum(x["prompt_tokens"] for x in teacher),
        "teacher_completion": sum(x["completion_tokens"] for x in teacher) + adaptation_teacher,
        "surrogate_prompt": sum(x["prompt_tokens"] for x in surrogate),
        "surrogate_completion": sum(x["completion_tokens"] for x in surrogate),
    }


def _report(report) -> dict | None:
    if report is None:
        return None
    return {
        "examples": report.examples,
        "holdout": report.holdout,
        "steps": report.steps,
        "best_step": report.best_step,
        "stopped_early": report.stopped_early,
        "train_loss": report.train_loss,
        "holdout_loss": report.holdout_loss,
    }
