"""The gate scored on the first N tokens of both answers (`gate.score_tokens`), on the tuning set.

    .venv/bin/python scripts/gate_prefix_tuning.py --out bench-out/gate-prefix [--ids FILE] [--lengths 0,64,48,32]
    .venv/bin/python scripts/gate_prefix_tuning.py --out bench-out/gate-prefix --summary-only

Per dialogue, generation 1 of the `cpu` budget is mined and trained once (the product's own
stages, the recipe benchmark's seeds); then the gate runs once per length N on that same adapter
(N = 0: whole answers, the reference the others are compared with). A row per dialogue goes to
OUT/results.jsonl at once, so a rerun goes on where it stopped. The summary gives, per N, the
gate's mean seconds and how many of generation 1's decisions agree with the whole-answer gate's.
It says nothing of which decisions are right: an adapter's post-switch fidelity is not measured
here (the recipe benchmark does that).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def summarise(rows: list[dict], lengths: list[int]) -> str:
    out = [
        f"{len(rows)} dialogues",
        "| score_tokens | gate s (mean) | G tokens asked (mean) | accepted | agrees with whole answers | "
        "improvement r with whole |",
        "|---|---|---|---|---|---|",
    ]
    for n in lengths:
        key = str(n)
        have = [r for r in rows if key in r["gates"] and "0" in r["gates"]]
        if not have:
            continue
        gates = [r["gates"][key] for r in have]
        whole = [r["gates"]["0"] for r in have]
        agree = sum(g["accepted"] == w["accepted"] for g, w in zip(gates, whole, strict=True))
        a = [g["mean_improvement"] for g in gates]
        b = [w["mean_improvement"] for w in whole]
        r = statistics.correlation(a, b) if len(have) > 2 and len(set(a)) > 1 and len(set(b)) > 1 else float("nan")
        out.append(
            f"| {n or 'whole'} | {statistics.fmean(g['seconds'] for g in gates):.1f} | "
            f"{statistics.fmean(g['tokens'] for g in gates):.0f} | {sum(g['accepted'] for g in gates)}/{len(have)} | "
            f"{agree}/{len(have)} | {r:.2f} |"
        )
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ids", type=Path, default=Path("docs/bench/sets/tuning.txt"))
    p.add_argument("--lengths", default="0,64,48,32", help="gate.score_tokens values; 0 (whole answers) first")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--answer-tokens", type=int, default=96, help="the served length (as the benchmarks)")
    p.add_argument("--summary-only", action="store_true")
    args = p.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    if lengths[0] != 0:
        raise SystemExit("--lengths must start with 0 (whole answers), the reference the others are compared with")
    results = args.out / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()] if results.exists() else []
    if not args.summary_only:
        import torch

        from soma.algo.adaptation import (
            VARIANTS,
            acceptance_answers,
            gate_answer_tokens,
            gate_decision,
            mining_stage,
            training_stage,
        )
        from soma.algo.config import preset
        from soma.bench.dialogues import read_id_list, select
        from soma.bench.fidelity_cli import DEFAULT_DATASETS, TEACHER_CACHE
        from soma.bench.pair import load_pair
        from soma.bench.recipe import Sweep
        from soma.config import TEACHER_REPETITION_PENALTY

        torch.set_num_threads(args.threads)
        cfg = preset("cpu")
        ids = read_id_list(args.ids)
        dialogues = select(DEFAULT_DATASETS, len(ids), 10, 0, ids=ids, max_turns=10)
        pair = load_pair("cpu", cfg, log=lambda m: print(m, file=sys.stderr), teacher_cache=TEACHER_CACHE.expanduser())
        sweep = Sweep(pair, cfg, args.answer_tokens, 0, TEACHER_REPETITION_PENALTY)
        done = {r["dialogue"] for r in rows}
        args.out.mkdir(parents=True, exist_ok=True)
        variant, surrogate = VARIANTS["soma"], pair.surrogate
        for index, dialogue in enumerate(dialogues):
            if dialogue.id in done:
                continue
            runner = sweep.runner(cfg)
            ctx = runner.dialogue_context(dialogue, index)
            teacher = runner.verbalized_teacher()  # asked nothing: the cpu budget mines no pairs
            mined = mining_stage(variant, ctx.warm, surrogate=surrogate, teacher=teacher, cfg=cfg, seed=ctx.seed)
            trained = training_stage(
                variant, mined.warm, mined.mined, surrogate=surrogate, cfg=cfg, adapter="prefix", seed=ctx.seed
            )
            row = {"dialogue": dialogue.id, "mining_s": mined.seconds, "training_s": trained.seconds, "gates": {}}
            for n in lengths:
                gate_cfg = cfg.with_changes({"gate.score_tokens": n})
                t0 = time.perf_counter()
                examples = acceptance_answers(surrogate, "prefix", trained.acceptance, gate_cfg, args.answer_tokens)
                decision, gap_old, gap_new = gate_decision(variant, examples, pair.encoder.gaps, gate_cfg)
                row["gates"][str(n)] = {
                    "seconds": time.perf_counter() - t0,
                    "tokens": gate_answer_tokens(surrogate.tokenizer, trained.acceptance, gate_cfg, args.answer_tokens),
                    "accepted": decision.accepted,
                    "mean_improvement": decision.mean_improvement,
                    "mean_gap_new": decision.mean_gap_new,
                    "gaps_old": gap_old,
                    "gaps_new": gap_new,
                }
            surrogate.adapters.delete("prefix")
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            rows.append(row)
            gates = row["gates"]
            print(
                f"#{index} {dialogue.id}: "
                + ", ".join(f"{n}: {'acc' if g['accepted'] else 'rej'} {g['seconds']:.1f} s" for n, g in gates.items()),
                file=sys.stderr,
                flush=True,
            )
    print(summarise(rows, lengths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
