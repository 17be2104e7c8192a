"""One dialogue through every method of the fidelity benchmark (paper C.3 protocol).

- original: F answers every turn with its own full history; this transcript O is the reference.
- surrogate: G answers every turn with its own full history.
- every other method answers each post-switch turn t = W+1..T given O up to t−1, so all answers
  are paired per turn with O's answer at t:
  history-prefix (base G, full O history), compressed-prefix (base G, compressed history S̃_t:
  what compression alone does), history-ft (LoRA on the warm (S_t, a_t^F) pairs, full history),
  random-ft (SOMA's LoRA budget and training context on uniformly sampled warm turns, S̃_t), soma and its ablations
  (the adaptation chain, S̃_t), soma-full (soma's adapter given the full history), router
  (decided later, from history-prefix's confidence, calibrated across the whole run).

`soma@served` is what a live session serves, run with the product's own state machine: the gate
(with the locality gate at the first turn it could switch), the drift monitor with shadow F
answers, rollback, and re-adaptation (after a rejection or a rollback, a new generation on the
latest teacher turns, as the adaptation driver does), every F token counted at the turn that
spent it. The ablations' `@served` rows stop at generation 1.

Methods are computed incrementally: `run(..., done=<an earlier result>)` adds only the methods
that are missing, so a rerun that adds a method reuses finished work; F's answers come from the
disk cache (soma.bench.teacher_cache), so F is asked again only for what it never answered.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soma.algo import gate_stats
from soma.algo.adaptation import VARIANTS, AdaptationOutcome, adapt
from soma.algo.compression import compressed_messages, teacher_summary
from soma.algo.config import MethodConfig
from soma.algo.drift import DriftMonitor, TurnCheck
from soma.algo.lora_train import TrainingPair, train
from soma.algo.mining import WarmTurn
from soma.algo.teacher_client import VerbalizedTeacher
from soma.bench.dialogues import Dialogue
from soma.bench.pair import BackendTeacher, LoadedPair
from soma.chat import SamplingParams
from soma.session import machine
from soma.session.records import Phase

SOMA_VARIANTS = ("soma", "soma-no-antidegen", "soma-no-expweight", "soma-ref")
# the product's re-adaptation policy (soma.config.DialogueSettings defaults)
REWARM_TURNS = 2
MAX_ATTEMPTS = 3


@dataclass
class RunOptions:
    cfg: MethodConfig
    methods: tuple[str, ...]
    answer_tokens: int
    seed: int
    topic_shift: bool = False
    shift_turns: int = 3
    teacher_repetition_penalty: float = 1.0
    adapter_dir: Path | None = None  # where trained adapters are kept for methods added later


@dataclass
class DialogueContext:
    """What every method of one dialogue shares: O's transcript and the contexts built from it."""

    queries: list[str]
    warm_n: int
    post: list[int]  # 0-based post-switch turns
    original: list[dict]
    pairs_o: list[tuple[str, str]]
    warm: list[WarmTurn]
    full_post: list[list[dict]]
    compressed_post: list[list[dict]]
    seed: int

    def full_context(self, t: int) -> list[dict]:
        msgs: list[dict] = []
        for q, a in self.pairs_o[:t]:
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        return [*msgs, {"role": "user", "content": self.queries[t]}]

    def warm_turn(self, t: int) -> WarmTurn:
        return WarmTurn(
            tuple(self.full_context(t)),
            self.original[t]["answer"],
            self.original[t]["finish_reason"] == "stop",
            tuple(self.compressed_at(t)),
        )

    compress: Callable[[list[tuple[str, str]], str], list[dict]] | None = None

    def compressed_at(self, t: int) -> list[dict]:
        """S̃_t at turn t (0-based): what the surrogate is served there, and what the adapter trains on."""
        return self.compress(self.pairs_o[:t], self.queries[t]) if self.compress else self.full_context(t)


@dataclass
class DialogueRun:
    pair: LoadedPair
    options: RunOptions
    note: Callable[[str], None] = field(default=lambda _s: None)

    # -- helpers -----------------------------------------------------------------------------------

    def _teacher_params(self, max_new_tokens: int) -> SamplingParams:
        return SamplingParams(max_new_tokens=max_new_tokens, repetition_penalty=self.options.teacher_repetition_penalty)

    def _teacher_answer(self, messages: list[dict]) -> dict:
        o = self.pair.teacher.generate(messages, self._teacher_params(self.options.answer_tokens))
        return {
            "answer": o.text,
            "prompt_tokens": o.prompt_tokens,
            "completion_tokens": o.completion_tokens,
            "finish_reason": o.finish_reason,
        }

    def verbalized_teacher(self) -> VerbalizedTeacher:
        """F behind V(P), asked as every benchmark answer is; a new one per run, so its call counts are
        the run's own."""
        return VerbalizedTeacher(BackendTeacher(self.pair.teacher, params=self._teacher_params(0)))

    def _surrogate_batch(self, adapter: str | None, conversations: list[list[dict]], **kw) -> list[Any]:
        return self.pair.surrogate.answers(adapter, conversations, self.options.answer_tokens, **kw)

    def _compressed(self, history: list[tuple[str, str]], query: str) -> list[dict]:
        c = self.options.cfg.compression
        summarize = None
        if c.summary == "teacher":
            params = self._teacher_params(max(16, c.summary_chars // 3))

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
            place=c.place,
            max_summarized_turns=c.max_summarized_turns,
        )

    def _store(self, out: dict, name: str, post: list[int], outs: list[Any], **tokens) -> None:
        """Answers, finish reasons and tokens of a method that answered every post-switch turn."""
        out["answers"][name] = {str(t + 1): o.text for t, o in zip(post, outs, strict=True)}
        out["finish"][name] = {str(t + 1): o.finish_reason for t, o in zip(post, outs, strict=True)}
        out["tokens"][name] = _tokens(surrogate=[_outcome(o) for o in outs], **tokens)

    def _adapter_path(self, index: int, dialogue: Dialogue, name: str) -> Path | None:
        folder = self.options.adapter_dir
        return None if folder is None else folder / f"{index:04d}-{_safe(dialogue.id)}-{name}"

    def _save_adapter(self, path: Path | None, name: str) -> None:
        if path is None:
            return
        weights, config = self.pair.surrogate.adapters.export(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".safetensors").write_bytes(weights)
        path.with_suffix(".json").write_bytes(config)

    def _load_adapter(self, path: Path | None, name: str) -> bool:
        if path is None or not path.with_suffix(".safetensors").is_file():
            return False
        weights, config = path.with_suffix(".safetensors").read_bytes(), path.with_suffix(".json").read_bytes()
        self.pair.surrogate.adapters.load(name, weights, config)
        return True

    # -- the run -----------------------------------------------------------------------------------

    def dialogue_context(self, dialogue: Dialogue, index: int) -> DialogueContext:
        """O's transcript of `dialogue` (F's answers, cached) and the warm, full and compressed contexts
        every method builds on; `index` seeds the dialogue."""
        cfg = self.options.cfg
        queries = list(dialogue.queries)
        warm_n = min(cfg.warm_turns, len(queries) - 1)
        post = list(range(warm_n, len(queries)))
        self.note("original")
        history: list[dict] = []
        original = []
        for q in queries:
            messages = [*history, {"role": "user", "content": q}]
            original.append(self._teacher_answer(messages))
            history = [*messages, {"role": "assistant", "content": original[-1]["answer"]}]
        pairs_o = [(q, o["answer"]) for q, o in zip(queries, original, strict=True)]
        ctx = DialogueContext(queries, warm_n, post, original, pairs_o, [], [], [], self.options.seed * 100_003 + index)
        ctx.compress = self._compressed
        ctx.warm = [ctx.warm_turn(t) for t in range(warm_n)]
        ctx.full_post = [ctx.full_context(t) for t in post]
        ctx.compressed_post = [ctx.compressed_at(t) for t in post]
        return ctx

    def run(
        self, dialogue: Dialogue, index: int, shift_queries: tuple[str, ...] = (), done: dict | None = None
    ) -> dict:
        """The dialogue's result with every method of the options; `done` is an earlier result of the same
        settings whose finished methods are kept."""
        opts = self.options
        t0 = time.perf_counter()
        ctx = self.dialogue_context(dialogue, index)
        queries, post, original, warm_n, seed = ctx.queries, ctx.post, ctx.original, ctx.warm_n, ctx.seed
        out: dict[str, Any] = done or {}
        finished = set(out.get("methods_done", []))
        out.update(
            {
                "id": dialogue.id,
                "dataset": dialogue.dataset,
                "task": dialogue.task,
                "turns": len(queries),
                "warm_turns": warm_n,
                "post_turns": [t + 1 for t in post],
                "original": original,
            }
        )
        for key in ("answers", "tokens", "adaptation", "seconds", "finish", "teacher_by_turn"):
            out.setdefault(key, {})
        out["seconds"].setdefault("original", time.perf_counter() - t0)
        out["answers"]["original"] = {str(t + 1): original[t]["answer"] for t in post}
        out["finish"]["original"] = {str(t + 1): original[t]["finish_reason"] for t in post}
        out["tokens"]["original"] = _tokens(teacher=[original[t] for t in post])
        out["teacher_by_turn"]["original"] = [o["prompt_tokens"] + o["completion_tokens"] for o in original]
        wanted = [m for m in opts.methods if m not in finished and m not in ("original", "router")]
        for name in [m for m in ("surrogate", "history-prefix", "compressed-prefix", "history-ft") if m in wanted]:
            self.note(name)
            t1 = time.perf_counter()
            getattr(self, "_m_" + name.replace("-", "_"))(ctx, out)
            out["seconds"][name] = time.perf_counter() - t1
            finished.add(name)

        encoder = self.pair.encoder
        warm_emb = encoder.encode(queries[:warm_n])
        locality = [gate_stats.locality(e, warm_emb) for e in encoder.encode(queries)]
        out["locality"] = locality
        for name in [m for m in SOMA_VARIANTS if m in wanted or (m == "soma" and "soma-full" in wanted)]:
            if name in finished:
                continue
            self._m_soma(ctx, out, name, index, dialogue, locality, warm_emb, shift_queries)
            finished.add(name)
        if "soma-full" in wanted:
            self.note("soma-full")
            path = self._adapter_path(index, dialogue, "soma")
            if not ("soma" in self.pair.surrogate.adapters.names or self._load_adapter(path, "soma")):
                raise RuntimeError(f"soma-full needs soma's adapter of dialogue {dialogue.id}; rerun with --fresh")
            self._store(out, "soma-full", post, self._surrogate_batch("soma", ctx.full_post))
            finished.add("soma-full")
        self.pair.surrogate.adapters.delete("soma")
        if "soma" in finished and "random-ft" in finished and "random-ft" not in wanted:
            size = out["adaptation"]["soma"].get("training_size")
            if size is not None and out["adaptation"]["random-ft"].get("size") != size:
                wanted.append("random-ft")  # trained before soma was (re)run: its budget follows soma's
        if "random-ft" in wanted:
            self.note("random-ft")
            rng = random.Random(seed + 7)
            # SOMA's budget (same steps, as many warm turns as SOMA trained on) on turns drawn uniformly,
            # without replacement (a duplicate could land in the early-stopping holdout), no mining
            soma_size = out["adaptation"].get("soma", {}).get("training_size")
            size = min(warm_n, soma_size or warm_n)
            # on the context SOMA trains on (lora.context), so the two differ only in which turns train
            context = self.options.cfg.lora.context
            pairs = [p for i in sorted(rng.sample(range(warm_n), size)) for p in warm_pairs(ctx.warm[i], i, context)]
            self._fine_tuned("random-ft", pairs, ctx.compressed_post, post, seed, out)
            out["adaptation"]["random-ft"]["size"] = soma_size
            finished.add("random-ft")
        finished.add("original")
        if "router" in opts.methods:
            finished.add("router")  # decided at report time from history-prefix
        out["methods_done"] = sorted(finished)
        return out

    # -- methods -----------------------------------------------------------------------------------

    def _m_surrogate(self, ctx: DialogueContext, out: dict) -> None:
        history, answers = [], []
        for q in ctx.queries:
            messages = [*history, {"role": "user", "content": q}]
            o = self._surrogate_batch(None, [messages])[0]
            answers.append(o)
            history = [*messages, {"role": "assistant", "content": o.text}]
        self._store(out, "surrogate", ctx.post, [answers[t] for t in ctx.post])

    def _m_history_prefix(self, ctx: DialogueContext, out: dict) -> None:
        outs = self._surrogate_batch(None, ctx.full_post, with_logprobs=True)
        self._store(out, "history-prefix", ctx.post, outs)
        out["router_confidence"] = {str(t + 1): o.mean_logprob for t, o in zip(ctx.post, outs, strict=True)}

    def _m_compressed_prefix(self, ctx: DialogueContext, out: dict) -> None:
        self._store(out, "compressed-prefix", ctx.post, self._surrogate_batch(None, ctx.compressed_post))

    def _m_history_ft(self, ctx: DialogueContext, out: dict) -> None:
        pairs = [TrainingPair(w.messages, w.answer, ended=w.ended, turn=i) for i, w in enumerate(ctx.warm)]
        self._fine_tuned("history-ft", pairs, ctx.full_post, ctx.post, ctx.seed, out)

    def _adapt(self, name: str, warm: list[WarmTurn], adapter: str, seed: int) -> AdaptationOutcome:
        return adapt(
            VARIANTS[name],
            warm,
            surrogate=self.pair.surrogate,
            teacher=self.verbalized_teacher(),  # per run: honest call counts
            gaps=self.pair.encoder.gaps,
            cfg=self.options.cfg,
            adapter=adapter,
            seed=seed,
            serve_tokens=self.options.answer_tokens,
        )

    def _m_soma(self, ctx, out, name, index, dialogue, locality, warm_emb, shift_queries) -> None:
        self.note(name)
        post, original, seed = ctx.post, ctx.original, ctx.seed
        t1 = time.perf_counter()
        outcome = self._adapt(name, ctx.warm, name, seed)
        if name == "soma":
            self._save_adapter(self._adapter_path(index, dialogue, name), name)
        outs = self._surrogate_batch(name, ctx.compressed_post)
        forced = [o.text for o in outs]
        adaptation_tokens = outcome.teacher_prompt_tokens + outcome.teacher_tokens
        self._store(
            out,
            name,
            post,
            outs,
            adaptation_prompt=outcome.teacher_prompt_tokens,
            adaptation_completion=outcome.teacher_tokens,
        )
        gen1 = self._live_session(outcome, post, forced, original, locality, warm_n=ctx.warm_n, seed=seed)
        if_accepted = self._live_session(
            outcome, post, forced, original, locality, warm_n=ctx.warm_n, seed=seed, force_accept=True
        )
        if name == "soma":
            session = self._served(ctx, outcome, forced, locality, index, dialogue)
        else:
            session = gen1
        out["answers"][f"{name}@served"] = session.pop("served")
        served_by = session["served_by"]
        out["tokens"][f"{name}@served"] = _tokens(
            surrogate=[_outcome(o) for o, by in zip(outs, served_by, strict=True) if by == "surrogate"],
            teacher=[original[t] for t, by in zip(post, served_by, strict=True) if by == "teacher"],
            adaptation_prompt=session.get("adaptation_prompt", outcome.teacher_prompt_tokens),
            adaptation_completion=session.get("adaptation_completion", outcome.teacher_tokens),
            shadow=session.get("shadow_tokens", 0),
        )
        if name == "soma":
            out["teacher_by_turn"]["soma@served"] = session.pop("teacher_by_turn")
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
            "training_size": sum(1 for k in outcome.training_keys if k.startswith("warm:")),
            "verbalizations": outcome.verbalizations,
            "training": _report(outcome.training),
            "adaptation_teacher_tokens": adaptation_tokens,
            "locality_ok": gen1["locality_ok"],
            "if_accepted": {
                "served_by": if_accepted["served_by"],
                "teacher_tokens": if_accepted["teacher_tokens"],
            },
            **{k: v for k, v in session.items() if k not in ("teacher_tokens",)},
        }
        if name == "soma" and self.options.topic_shift:
            out["topic_shift"] = self._topic_shift(locality, warm_emb, shift_queries, post)
            out["topic_shift"]["switched"] = session["switch_turn"] is not None
        out["seconds"][name] = time.perf_counter() - t1
        if name != "soma":
            self.pair.surrogate.adapters.delete(name)

    def _fine_tuned(self, name: str, pairs, contexts, post, seed: int, out: dict) -> None:
        """A LoRA baseline: train adapter `name` on pairs (uniform weights), answer every post-switch turn."""
        t1 = time.perf_counter()
        report = train(
            self.pair.surrogate.adapters,
            name,
            self.pair.surrogate.tokenizer,
            pairs,
            self.options.cfg.lora,
            weighted=False,
            seed=seed,
        )
        self._store(out, name, post, self._surrogate_batch(name, contexts))
        out["adaptation"][name] = {"seconds": {"training": report.seconds}, "training": _report(report)}
        out["seconds"][name] = time.perf_counter() - t1
        self.pair.surrogate.adapters.delete(name)

    def _live_session(
        self, outcome, post, forced, original, locality, *, warm_n: int, seed: int, force_accept: bool = False
    ) -> dict:
        """Generation 1 only: soma.session + the drift monitor over the post-switch turns; who serves each
        turn and the F tokens it costs there (`force_accept`: as if the gate had accepted)."""
        cfg = self.options.cfg
        policy = machine.Policy(warm_turns=warm_n, rewarm_turns=10_000, max_attempts=1)
        state = machine.Adaptation()
        for turn in range(1, warm_n + 1):
            state = machine.on_turn_served(state, turn, True, policy)
        state = machine.on_training_done(state, state.generation)
        first_locality = locality[post[0]] if post else 1.0
        local_ok = first_locality >= cfg.gate.min_locality
        accepted = (outcome.decision.accepted or force_accept) and local_ok
        reason = outcome.decision.reason + f"; locality {first_locality:.3f} vs {cfg.gate.min_locality:.2f}"
        state = machine.on_gate_decision(state, state.generation, accepted, reason, policy)
        monitor = DriftMonitor(cfg.drift.consecutive, cfg.drift.window)
        rng = random.Random(seed + 11)
        served, served_by, teacher_tokens, pending_gap = {}, [], [], None
        switch_turn = rollback_turn = None
        for t, answer in zip(post, forced, strict=True):
            spent = 0
            if state.phase is Phase.SURROGATE:
                state, rolled = _drift_check(state, monitor, locality[t], pending_gap, cfg, t + 1)
                pending_gap = None
                rollback_turn = t + 1 if rolled else rollback_turn
            if state.phase is Phase.SURROGATE:
                switch_turn = switch_turn or t + 1
                served[str(t + 1)] = answer
                served_by.append("surrogate")
                if rng.random() < cfg.drift.shadow_fraction:  # shadow F answer, off the critical path
                    pending_gap = self.pair.encoder.gaps([(original[t]["answer"], answer)])[0]
                    spent = _spent(original[t])
            else:
                served[str(t + 1)] = original[t]["answer"]
                served_by.append("teacher")
                spent = _spent(original[t])
            teacher_tokens.append(spent)
        return {
            "served": served,
            "served_by": served_by,
            "teacher_tokens": teacher_tokens,
            "switch_turn": switch_turn,
            "rollback_turn": rollback_turn,
            "locality_ok": local_ok,
            "phase": state.phase.value,
            "transitions": [f"{x.source.value}->{x.target.value}: {x.reason}" for x in state.history],
        }

    def _served(
        self, ctx: DialogueContext, first: AdaptationOutcome, forced: list[str], locality, index, dialogue
    ) -> dict:
        """soma as the product serves it, re-adaptation on: each generation's gate decision takes effect
        at the turn after the one that started it (the jobs run while F answers that turn); a rejection
        or a rollback starts a new generation on the latest teacher turns (after REWARM_TURNS teacher
        turns for a rollback), until MAX_ATTEMPTS failed attempts give up. F's tokens per turn include
        the adaptations' own F calls and the drift monitor's shadow answers."""
        cfg, post, original, warm_n = self.options.cfg, ctx.post, ctx.original, ctx.warm_n
        policy = machine.Policy(warm_turns=warm_n, rewarm_turns=REWARM_TURNS, max_attempts=MAX_ATTEMPTS)
        top = max(warm_n, cfg.lora.top_warm)
        state = machine.Adaptation()
        for turn in range(1, warm_n + 1):
            state = machine.on_turn_served(state, turn, True, policy)
        by_turn = [_spent(o) for o in original]
        by_turn[warm_n - 1] += first.teacher_prompt_tokens + first.teacher_tokens
        teacher_turns = list(range(warm_n))  # 0-based turns F served
        pending: tuple[int, AdaptationOutcome, str | None] | None = (state.generation, first, None)
        answers: dict[int, str] = dict(zip(post, forced, strict=True))  # the current generation's G answers
        adapter: str | None = "soma"
        prompt_tokens, completion_tokens = first.teacher_prompt_tokens, first.teacher_tokens
        shadow_tokens, generations, decisions = 0, 1, []
        monitor = DriftMonitor(cfg.drift.consecutive, cfg.drift.window)
        rng = random.Random(ctx.seed + 11)
        served, served_by, pending_gap = {}, [], None
        switch_turn = rollback_turn = None
        centroid = self.pair.encoder.encode(ctx.queries[:warm_n])
        local = list(locality)
        for t in post:
            if pending is not None and state.phase is Phase.ADAPTING and pending[0] == state.generation:
                gen, outcome, name = pending
                pending = None
                state = machine.on_training_done(state, gen)
                ok = local[t] >= cfg.gate.min_locality
                accepted = outcome.decision.accepted and ok
                reason = f"{outcome.decision.reason}; locality {local[t]:.3f} vs {cfg.gate.min_locality:.2f}"
                decisions.append({"generation": gen, "turn": t + 1, "accepted": accepted, "reason": reason})
                state = machine.on_gate_decision(state, gen, accepted, reason, policy)
                if accepted:
                    monitor = DriftMonitor(cfg.drift.consecutive, cfg.drift.window)
                    pending_gap = None
                    if name is not None:  # a later generation: its own answers from here on
                        rest = [u for u in post if u >= t]
                        contexts = [ctx.compressed_post[post.index(u)] for u in rest]
                        answers.update(
                            {u: o.text for u, o in zip(rest, self._surrogate_batch(name, contexts), strict=True)}
                        )
                        adapter = name
            spent = 0
            if state.phase is Phase.SURROGATE:
                state, rolled = _drift_check(state, monitor, local[t], pending_gap, cfg, t + 1)
                pending_gap = None
                rollback_turn = rollback_turn or (t + 1 if rolled else None)
            if state.phase is Phase.SURROGATE:
                switch_turn = switch_turn or t + 1
                served[str(t + 1)] = answers[t]
                served_by.append("surrogate")
                if rng.random() < cfg.drift.shadow_fraction:
                    pending_gap = self.pair.encoder.gaps([(original[t]["answer"], answers[t])])[0]
                    spent = _spent(original[t])
                    shadow_tokens += spent
            else:
                served[str(t + 1)] = original[t]["answer"]
                served_by.append("teacher")
                spent = _spent(original[t])
                teacher_turns.append(t)
                state = machine.on_turn_served(state, t + 1, True, policy)
            by_turn[t] = spent
            if state.phase is Phase.ADAPTING and pending is None and t + 1 < len(ctx.queries):
                # a new generation starts now, on the latest teacher turns (the driver's warm_turn_indices)
                gen = state.generation
                chosen = teacher_turns[-top:]
                name = f"soma-g{gen}"
                outcome = self._adapt("soma", [ctx.warm_turn(u) for u in chosen], name, ctx.seed + 1009 * gen)
                generations += 1
                prompt_tokens += outcome.teacher_prompt_tokens
                completion_tokens += outcome.teacher_tokens
                by_turn[t] += outcome.teacher_prompt_tokens + outcome.teacher_tokens
                centroid = self.pair.encoder.encode([ctx.queries[u] for u in chosen])
                local = [gate_stats.locality(e, centroid) for e in self.pair.encoder.encode(ctx.queries)]
                pending = (gen, outcome, name)
        for name in list(self.pair.surrogate.adapters.names):
            if name.startswith("soma-g"):
                self.pair.surrogate.adapters.delete(name)
        return {
            "served": served,
            "served_by": served_by,
            "teacher_by_turn": by_turn,
            "switch_turn": switch_turn,
            "rollback_turn": rollback_turn,
            "generations": generations,
            "gate_decisions": decisions,
            "adaptation_prompt": prompt_tokens,
            "adaptation_completion": completion_tokens,
            "shadow_tokens": shadow_tokens,
            "final_adapter": adapter,
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


def _drift_check(state, monitor: DriftMonitor, locality: float, shadow_gap, cfg: MethodConfig, turn: int):
    """One turn of the drift monitor on a switched session: (new state, rolled back now)."""
    check = TurnCheck(
        locality,
        locality >= cfg.drift.min_locality,
        shadow_gap,
        shadow_gap is None or shadow_gap <= cfg.drift.max_shadow_gap,
    )
    if monitor.observe(check):
        return machine.on_drift(state, f"{cfg.drift.consecutive} failed checks in a row at turn {turn}"), True
    return state, False


def _outcome(o: Any) -> dict:
    return {"prompt_tokens": o.prompt_tokens, "completion_tokens": o.completion_tokens}


def _spent(o: dict) -> int:
    return o["prompt_tokens"] + o["completion_tokens"]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:80]


def warm_pairs(turn: WarmTurn, index: int, context: str) -> list[TrainingPair]:
    """Uniform-weight training pairs of one warm turn on the configured context (served, full or both)."""
    full = TrainingPair(turn.messages, turn.answer, ended=turn.ended, turn=index)
    served = TrainingPair(turn.served_messages, turn.answer, ended=turn.ended, turn=index)
    return {"full": [full], "served": [served], "both": [served, full]}[context]


def _tokens(
    *, teacher=(), surrogate=(), adaptation_prompt: int = 0, adaptation_completion: int = 0, shadow: int = 0
) -> dict:
    """Tokens of a method over the post-switch turns; F's include what adaptation asked of it (prompt and
    completion) and the drift monitor's shadow answers."""
    return {
        "teacher_prompt": sum(x["prompt_tokens"] for x in teacher) + adaptation_prompt,
        "teacher_completion": sum(x["completion_tokens"] for x in teacher) + adaptation_completion,
        "teacher_shadow": shadow,
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
