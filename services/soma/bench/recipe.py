"""`soma bench recipe`: the adaptation recipe's ablations on the tuning set, cheap enough to run many.

A full fidelity run costs ten minutes a dialogue on 2 cores; choosing a recipe needs some twenty
configurations. This sweep runs only what a configuration changes. For each dialogue (the outer
loop, so a sweep stopped at any point has every configuration on the same dialogues) and each
named entry of a grid file it adapts once (generation 1, no re-adaptation) and measures:

- `heldout_nll`: the mean per-token NLL of F's post-switch answers (Original's transcript) under
  the adapted G, on the context it is served (S̃_t): the held-out-turn loss the recipe is chosen by;
- `cosine`: MiniLM cosine of G's generated post-switch answers to F's (the benchmark's measure);
- the gate's decision and its per-case gaps, so every bound can be replayed against what the
  adapter really did on the turns after the switch (its false-switch rate);
- the training report and seconds per stage.

Grid entries name a `method`: soma (the chain), random-ft (the same budget and context on warm
turns drawn at random, no mining), history-ft (all warm turns, full history, served the full
history), base-served (compressed-prefix) or base-full (history-prefix). F's answers come from the
teacher cache; mining is shared by entries with the same mining settings. Rows append to
OUT/results.jsonl, keyed by dialogue, entry name and a hash of its settings: a rerun skips them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

METHODS = ("soma", "random-ft", "history-ft", "base-served", "base-full")


def load_grid(path: Path) -> list[dict]:
    entries = yaml.safe_load(path.read_text()) or []
    seen = set()
    for entry in entries:
        if "name" not in entry:
            raise ValueError(f"{path}: every entry needs a name")
        if entry["name"] in seen:
            raise ValueError(f"{path}: entry {entry['name']!r} appears twice")
        seen.add(entry["name"])
        entry.setdefault("method", "soma")
        entry.setdefault("set", {})
        if entry["method"] not in METHODS:
            raise ValueError(f"{path}: entry {entry['name']!r}: method must be one of {', '.join(METHODS)}")
    return entries


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _done(path: Path) -> dict[tuple[str, str, str], dict]:
    rows = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[(row["dialogue"], row["name"], row["hash"])] = row
    return rows


class Sweep:
    def __init__(self, pair, base_cfg, answer_tokens: int, seed: int, teacher_rp: float):
        self.pair = pair
        self.base_cfg = base_cfg
        self.answer_tokens = answer_tokens
        self.seed = seed
        self.teacher_rp = teacher_rp
        self._mined: dict[str, Any] = {}

    def runner(self, cfg):
        """The fidelity benchmark's run of one dialogue under `cfg` (F's answers only), whose contexts and
        teacher a recipe row builds on."""
        from soma.bench.fidelity_run import DialogueRun, RunOptions

        options = RunOptions(
            cfg, ("original",), self.answer_tokens, self.seed, teacher_repetition_penalty=self.teacher_rp
        )
        return DialogueRun(self.pair, options)

    def nll(self, adapter: str | None, contexts: list[list[dict]], answers: list[str], ended: list[bool]):
        """Per-turn mean token NLL of F's answers (+ EOS where F ended) given each context."""
        import torch

        from soma.algo import lm
        from soma.algo.lora_objective import build_example
        from soma.algo.lora_train import example_loss

        tok = self.pair.surrogate.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else int(tok.eos_token_id)
        out = []
        with self.pair.surrogate.adapters.using(adapter) as model, torch.no_grad():
            for messages, answer, end in zip(contexts, answers, ended, strict=True):
                example = build_example(
                    lm.chat_ids(tok, messages), lm.text_ids(tok, answer), int(tok.eos_token_id), 1.0, ended=end
                )
                out.append(float(example_loss(model, [example], pad)))
        return out

    def run(self, dialogue, index: int, entry: dict) -> dict:
        from soma.algo.adaptation import VARIANTS, acceptance_answers, gate_decision, mining_stage, training_stage
        from soma.algo.lora_train import train
        from soma.bench.fidelity_run import warm_pairs

        cfg = self.base_cfg.with_changes(entry["set"])
        runner = self.runner(cfg)
        ctx = runner.dialogue_context(dialogue, index)
        method = entry["method"]
        post = ctx.post
        full = method in ("history-ft", "base-full")
        contexts = ctx.full_post if full else ctx.compressed_post
        answers = [ctx.original[t]["answer"] for t in post]
        ended = [ctx.original[t]["finish_reason"] == "stop" for t in post]
        row: dict[str, Any] = {"seconds": {}}
        adapter = None
        surrogate = self.pair.surrogate
        if method == "soma":
            variant = VARIANTS["soma"]
            # everything the mined cases depend on, the turns that will train included (F is asked about those only)
            key = _hash(
                [
                    dialogue.id,
                    cfg.mining.model_dump(),
                    cfg.lora.hardness,
                    cfg.lora.top_warm,
                    cfg.compression.model_dump(),
                    [cfg.gate.split, cfg.gate.acceptance_size, cfg.gate.mined_in_acceptance],
                ]
            )
            if key not in self._mined:
                teacher = runner.verbalized_teacher()
                self._mined[key] = mining_stage(
                    variant, ctx.warm, surrogate=surrogate, teacher=teacher, cfg=cfg, seed=ctx.seed
                )
            mined = self._mined[key]
            row["seconds"].update(mined.seconds)
            row["teacher_calls"] = mined.teacher_calls
            row["mined_answers"] = [c.answer for c in mined.mined]
            row["verbalizations"] = mined.verbalizations
            adapter = "recipe"
            trained = training_stage(
                variant, mined.warm, mined.mined, surrogate=surrogate, cfg=cfg, adapter=adapter, seed=ctx.seed
            )
            row["seconds"]["training"] = trained.seconds
            row["training"] = vars(trained.report)
            row["training_keys"] = [c.key for c in trained.training]
            row["acceptance_keys"] = [c.key for c in trained.acceptance]
            t0 = time.perf_counter()
            examples = acceptance_answers(surrogate, adapter, trained.acceptance, cfg, self.answer_tokens)
            decision, gap_old, gap_new = gate_decision(variant, examples, self.pair.encoder.gaps, cfg)
            row["seconds"]["gate"] = time.perf_counter() - t0
            row["gate"] = {
                "accepted": decision.accepted,
                "mean_improvement": decision.mean_improvement,
                "reason": decision.reason,
                "gaps_old": gap_old,
                "gaps_new": gap_new,
            }
        elif method in ("random-ft", "history-ft"):
            adapter = "recipe"
            if method == "history-ft":
                pairs = [p for i, w in enumerate(ctx.warm) for p in warm_pairs(w, i, "full")]
            else:
                size = min(ctx.warm_n, entry.get("size", cfg.lora.top_warm), max(1, ctx.warm_n - 1))
                chosen = sorted(random.Random(ctx.seed + 7).sample(range(ctx.warm_n), size))
                pairs = [p for i in chosen for p in warm_pairs(ctx.warm[i], i, cfg.lora.context)]
            report = train(
                surrogate.adapters, adapter, surrogate.tokenizer, pairs, cfg.lora, weighted=False, seed=ctx.seed
            )
            row["seconds"]["training"] = report.seconds
            row["training"] = vars(report)
        t0 = time.perf_counter()
        row["heldout_nll"] = self.nll(adapter, contexts, answers, ended)
        outs = surrogate.answers(adapter, contexts, self.answer_tokens)
        row["seconds"]["answers"] = time.perf_counter() - t0
        row["answers"] = [o.text for o in outs]
        emb_ref = self.pair.encoder.encode(answers)
        emb = self.pair.encoder.encode(row["answers"])
        row["cosine"] = (emb_ref * emb).sum(-1).clamp(-1, 1).tolist()
        if adapter is not None:
            surrogate.adapters.delete(adapter)
        return row


def summarise(rows: list[dict], seed: int = 0) -> dict:
    """Per entry: dialogues, mean held-out NLL and cosine, the paired difference to base-served over the
    dialogues both ran (bootstrap 95% CI), gate acceptance and false switches, seconds."""
    by_name: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_name.setdefault(row["name"], {})[row["dialogue"]] = row
    base = by_name.get("base-served", {})
    out = {}
    for name, per in by_name.items():
        ds = sorted(per)
        mean_cos = [statistics.fmean(per[d]["cosine"]) for d in ds]
        mean_nll = [statistics.fmean(per[d]["heldout_nll"]) for d in ds]
        entry: dict[str, Any] = {
            "method": per[ds[0]]["method"],
            "dialogues": len(ds),
            "cosine": statistics.fmean(mean_cos),
            "heldout_nll": statistics.fmean(mean_nll),
        }
        shared = [d for d in ds if d in base]
        if shared:
            entry["vs_base_served"] = _paired(per, base, shared, seed)
            entry["nll_vs_base_served"] = statistics.fmean(
                statistics.fmean(per[d]["heldout_nll"]) - statistics.fmean(base[d]["heldout_nll"]) for d in shared
            )
        default = [d for d in ds if d in by_name.get("soma", {})]
        if name != "soma" and default:  # the same dialogues as the shipped default: is the change worth it?
            entry["vs_soma"] = _paired(per, by_name["soma"], default, seed)
        gated = [per[d] for d in ds if "gate" in per[d]]
        if gated:
            entry["accepted"] = sum(r["gate"]["accepted"] for r in gated)
            entry["false_switches"] = sum(
                1
                for r in gated
                if r["gate"]["accepted"]
                and r["dialogue"] in base
                and statistics.fmean(r["cosine"]) < statistics.fmean(base[r["dialogue"]]["cosine"])
            )
            entry["mean_gate_improvement"] = statistics.fmean(r["gate"]["mean_improvement"] for r in gated)
            entry["gate_replay"] = gate_replay(gated, base)
        seconds = [sum(v for k, v in per[d]["seconds"].items() if k != "answers") for d in ds]
        entry["adaptation_seconds"] = statistics.fmean(seconds)
        trainings = [per[d]["training"] for d in ds if per[d].get("training")]
        if trainings:
            entry["final_train_loss"] = statistics.median(t["train_loss"][-1] for t in trainings)
        out[name] = entry
    return out


def _paired(per: dict[str, dict], ref: dict[str, dict], shared: list[str], seed: int) -> dict:
    """Mean and bootstrap 95% CI of the per-dialogue cosine difference (each a mean over its post-switch turns)."""
    diffs = [statistics.fmean(per[d]["cosine"]) - statistics.fmean(ref[d]["cosine"]) for d in shared]
    return {"mean": statistics.fmean(diffs), "ci95": _bootstrap(diffs, seed), "dialogues": len(shared)}


EPSILONS = (-0.05, 0.0, 0.02, 0.05, 0.1)


def gate_replay(rows: list[dict], base: dict[str, dict], delta: float = 0.1) -> dict:
    """Every bound and ε replayed on one entry's stored acceptance gaps, against what the adapter did
    after the switch: accepted, false switches (accepted, yet below base-served on the post-switch
    turns) and missed ones (rejected, yet above it). The default bound is chosen by this table."""
    from soma.algo.gate_stats import confidence_bound, improvements

    out: dict[str, Any] = {}
    gated = [r for r in rows if "gate" in r and r["dialogue"] in base]
    # per row, not per dialogue: the pooled replay holds several adapters of one dialogue
    better = [statistics.fmean(r["cosine"]) > statistics.fmean(base[r["dialogue"]]["cosine"]) for r in gated]
    for bound in ("none", "hoeffding", "bernstein"):
        for eps in EPSILONS:
            accepted = []
            for r in gated:
                x = improvements(r["gate"]["gaps_old"], r["gate"]["gaps_new"])
                mean_new = statistics.fmean(r["gate"]["gaps_new"])
                accepted.append(statistics.fmean(x) >= eps + confidence_bound(x, delta, bound) and mean_new <= 0.6)
            out[f"{bound} eps={eps:+.2f}"] = {
                "accepted": sum(accepted),
                "false_switches": sum(1 for ok, b in zip(accepted, better, strict=True) if ok and not b),
                "missed": sum(1 for ok, b in zip(accepted, better, strict=True) if not ok and b),
                "of": len(accepted),
            }
    out["better_than_base"] = sum(better)
    if gated:
        x0 = improvements(gated[0]["gate"]["gaps_old"], gated[0]["gate"]["gaps_new"])
        out["batch_size"] = len(x0)
        out["hoeffding_bound"] = confidence_bound(x0, delta, "hoeffding")
        out["bernstein_bound_at_zero_variance"] = confidence_bound([0.0] * len(x0), delta, "bernstein")
    return out


def _bootstrap(values: list[float], seed: int, draws: int = 2000) -> list[float]:
    if len(values) < 2:
        return [math.nan, math.nan]
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(draws))
    return [means[int(0.025 * draws)], means[int(0.975 * draws) - 1]]


def pooled_gate_replay(rows: list[dict]) -> dict:
    """The replay over every gated adapter of every SOMA entry: more adapters than one entry has, at the
    cost of independence (the entries share dialogues). Entries whose |B| differs are left out."""
    base = {r["dialogue"]: r for r in rows if r["name"] == "base-served"}
    gated = [r for r in rows if "gate" in r and len(r["gate"]["gaps_old"]) == 2]
    return gate_replay(gated, base)


def _replay_table(replay: dict) -> list[str]:
    lines = ["| bound, ε | accepted | false switches | missed |", "|---|---|---|---|"]
    for key, v in replay.items():
        if isinstance(v, dict):
            lines.append(f"| {key} | {v['accepted']}/{v['of']} | {v['false_switches']} | {v['missed']} |")
    return lines


def markdown(summary: dict, grid: list[dict], command: str, pooled: dict | None = None) -> str:
    lines = [
        "# Recipe ablations on the tuning set",
        "",
        f"Command: `{command}`",
        "",
        "Cosine: MiniLM cosine of G's post-switch answers to F's (Original), mean of per-dialogue means. "
        "Δ: paired per-dialogue difference to base-served (compressed-prefix, the unadapted G on the same "
        "context), bootstrap 95% CI over dialogues. NLL: held-out-turn loss (F's post-switch answers under "
        "G on S̃_t). Δ vs soma: the same, paired with the shipped default on the dialogues both ran. "
        "False switches: accepted, yet worse than base-served on the post-switch turns.",
        "",
        "| entry | method | settings | dlg | cosine | Δ vs base-served [95% CI] | Δ vs soma [95% CI] | held-out NLL | "
        "ΔNLL | accepted | false sw. | train loss | adapt s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    settings = {e["name"]: e["set"] for e in grid}
    for name, s in summary.items():
        lines.append(
            f"| {name} | {s['method']} | {_fmt_set(settings.get(name, {}))} | {s['dialogues']} | {s['cosine']:.3f} | "
            + _fmt_paired(s.get("vs_base_served"))
            + " | "
            + _fmt_paired(s.get("vs_soma"))
            + f" | {s['heldout_nll']:.3f} | "
            + (f"{s['nll_vs_base_served']:+.3f}" if "nll_vs_base_served" in s else "–")
            + " | "
            + (f"{s['accepted']}/{s['dialogues']}" if "accepted" in s else "–")
            + " | "
            + (str(s["false_switches"]) if "false_switches" in s else "–")
            + " | "
            + (f"{s['final_train_loss']:.3f}" if "final_train_loss" in s else "–")
            + f" | {s['adaptation_seconds']:.0f} |"
        )
    default = summary.get("soma", {}).get("gate_replay")
    if default:
        lines += [
            "",
            f"## The gate of `soma`, replayed (|B| = {default['batch_size']}, δ = 0.1)",
            "",
            f"Hoeffding's γ at this |B| is {default['hoeffding_bound']:.2f} and Bernstein's is at least "
            f"{default['bernstein_bound_at_zero_variance']:.2f} (zero variance); an improvement X lies in [−1, 1].",
            "",
            *_replay_table(default),
        ]
    if pooled and pooled.get("batch_size"):
        of = next(v["of"] for v in pooled.values() if isinstance(v, dict))
        lines += [
            "",
            f"## Every gated adapter of every entry with |B| = 2, replayed ({of} adapters)",
            "",
            f"{pooled['better_than_base']} of {of} beat base-served after the switch, so accepting all of them "
            f"would switch falsely {of - pooled['better_than_base']} times in {of}. The entries share dialogues, "
            "so these adapters are not independent.",
            "",
            *_replay_table(pooled),
        ]
    return "\n".join(lines) + "\n"


def _fmt_paired(delta: dict | None) -> str:
    if not delta:
        return "–"
    low, high = delta["ci95"]
    return f"{delta['mean']:+.3f} [{low:+.3f}, {high:+.3f}]"


def _fmt_set(changes: dict) -> str:
    return ", ".join(f"`{k}={v}`" for k, v in changes.items()) or "defaults"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from soma.bench.fidelity_cli import DEFAULT_DATASETS, SETS_DIR, TEACHER_CACHE

    p.add_argument("--grid", type=Path, required=True, help="YAML list of {name, method, set: {KEY: VALUE}}")
    p.add_argument("--dataset", type=Path, nargs="+", default=DEFAULT_DATASETS)
    p.add_argument("--ids", type=Path, default=SETS_DIR / "tuning.txt")
    p.add_argument("--only", default="", help="comma-separated entry names to run (default: all)")
    p.add_argument("--max-turns", type=int, default=10)
    p.add_argument("--answer-tokens", type=int, default=96)
    p.add_argument("--budget", default="cpu")
    p.add_argument("--teacher-cache", type=Path, default=TEACHER_CACHE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--max-minutes", type=float, default=None, help="start no new dialogue after this long")
    p.add_argument("--summary-only", action="store_true")
    p.add_argument("--out", type=Path, default=Path("bench-out/recipe"))


def run(args: argparse.Namespace) -> int:
    from soma.algo.config import preset
    from soma.bench.dialogues import read_id_list, select
    from soma.config import TEACHER_REPETITION_PENALTY

    grid = load_grid(args.grid)
    only = {n.strip() for n in args.only.split(",") if n.strip()}
    entries = [e for e in grid if not only or e["name"] in only]
    cfg = preset(args.budget)
    ids = read_id_list(args.ids)
    dialogues = select(args.dataset, len(ids), 10, args.seed, ids=ids, max_turns=args.max_turns)
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    done = _done(results)
    command = "soma bench recipe " + " ".join(sys.argv[3:]) if len(sys.argv) > 3 else "soma bench recipe"
    if not args.summary_only:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        from soma.bench.pair import load_pair

        pair = load_pair(
            "cpu", cfg, log=lambda m: print(m, file=sys.stderr), teacher_cache=args.teacher_cache.expanduser()
        )
        sweep = Sweep(pair, cfg, args.answer_tokens, args.seed, TEACHER_REPETITION_PENALTY)
        started = time.perf_counter()
        for index, dialogue in enumerate(dialogues):
            if args.max_minutes is not None and time.perf_counter() - started > args.max_minutes * 60:
                print("time is up: no new dialogue", file=sys.stderr)
                break
            for entry in entries:
                key = (dialogue.id, entry["name"], _hash([entry["method"], entry["set"], args.answer_tokens]))
                if key in done:
                    continue
                t0 = time.perf_counter()
                row = sweep.run(dialogue, index, entry)
                row.update({"dialogue": dialogue.id, "name": entry["name"], "hash": key[2], "method": entry["method"]})
                row["wall_seconds"] = time.perf_counter() - t0
                with results.open("a") as f:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                done[key] = row
                print(
                    f"#{index} {dialogue.id} {entry['name']}: cosine {statistics.fmean(row['cosine']):.3f} "
                    f"nll {statistics.fmean(row['heldout_nll']):.3f} "
                    + (f"gate {'accepted' if row['gate']['accepted'] else 'rejected'} " if "gate" in row else "")
                    + f"({row['wall_seconds']:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    wanted = {(e["name"], _hash([e["method"], e["set"], args.answer_tokens])) for e in grid}
    rows = [r for r in done.values() if (r["name"], r["hash"]) in wanted]
    summary = summarise(rows, args.seed)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    pooled = pooled_gate_replay(rows)
    (args.out / "gate-replay.json").write_text(json.dumps(pooled, indent=1))
    text = markdown(summary, grid, command, pooled)
    (args.out / "summary.md").write_text(text)
    print(text)
    return 0
