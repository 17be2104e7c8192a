"""`soma bench fidelity`: every method on the same dialogues in one run, with paired statistics.

Each finished dialogue is written to DIR/dialogues/ at once, under a fingerprint of everything
that shapes its result (pair, methods, method config, answer budget, seed); a rerun with the
same settings reuses it, so a long benchmark can be stopped and continued (`--fresh` redoes
everything). The report is rebuilt from all finished dialogues at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from soma.algo.config import MethodConfig, preset
from soma.bench import fidelity_report as rep
from soma.bench.dialogues import DatasetError, read_id_list, select
from soma.bench.fidelity_cli import METHODS
from soma.bench.fidelity_run import DialogueRun, RunOptions
from soma.bench.pair import load_pair


def method_config(args: argparse.Namespace) -> MethodConfig:
    cfg = preset(args.budget)
    if args.config:
        data = yaml.safe_load(args.config.read_text()) or {}
        flat: dict[str, Any] = {}

        def walk(prefix: str, node: Any) -> None:
            if isinstance(node, dict):
                for k, v in node.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                flat[prefix] = node

        walk("", data)
        cfg = cfg.with_changes(flat)
    changes = {}
    for item in args.changes:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: use KEY=VALUE, e.g. mining.steps=12")
        key, value = item.split("=", 1)
        changes[key.strip()] = yaml.safe_load(value)  # 12 -> int, true -> bool, text stays text
    return cfg.with_changes(changes) if changes else cfg


def parse_methods(text: str) -> tuple[str, ...]:
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if "original" not in methods:
        methods = ("original", *methods)  # every similarity is measured against it
    if "soma-full" in methods and "soma" not in methods:
        methods = (*methods, "soma")  # soma-full answers with soma's adapter
    if "router" in methods and "history-prefix" not in methods:
        methods = (*methods, "history-prefix")  # the router routes between F and history-prefix
    return methods


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:80]


def run(args: argparse.Namespace) -> int:
    try:
        cfg = method_config(args)
        methods = parse_methods(args.methods)
        if args.max_turns is not None and args.max_turns < cfg.warm_turns + 1:
            raise ValueError(
                f"--max-turns {args.max_turns} leaves no post-switch turn: it must be at least W + 1 = "
                f"{cfg.warm_turns + 1}"
            )
        ids = read_id_list(args.ids) if args.ids else None
        dialogues = select(args.dataset, args.dialogues, args.min_turns, args.seed, ids=ids, max_turns=args.max_turns)
    except (ValueError, DatasetError) as exc:
        print(f"soma bench fidelity: {exc}", file=sys.stderr)
        return 2
    shortest = min(len(d.queries) for d in dialogues)
    if shortest <= cfg.warm_turns:
        print(
            f"note: dialogues with {shortest} turns get W = turns − 1 (W = {cfg.warm_turns} leaves no "
            "post-switch turn)",
            file=sys.stderr,
        )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out_dir: Path = args.out
    cache_dir = out_dir / "dialogues"
    cache_dir.mkdir(parents=True, exist_ok=True)
    options = RunOptions(
        cfg,
        methods,
        args.answer_tokens,
        args.seed,
        args.topic_shift,
        teacher_repetition_penalty=args.teacher_repetition_penalty,
        adapter_dir=out_dir / "adapters",
    )
    # what shapes every method's result; the methods themselves are not in it, so adding one reuses the rest
    fingerprint = run_fingerprint(args, fingerprint_config(cfg))
    # what shapes each group of baselines: a change to settings a group does not read keeps its results
    partial = partial_fingerprints(args, cfg)
    started = time.perf_counter()

    from tqdm import tqdm

    pair = load_pair(
        args.pair, cfg, log=lambda msg: print(msg, file=sys.stderr), teacher_cache=args.teacher_cache.expanduser()
    )
    runner = DialogueRun(pair, options)
    results, reused = [], 0
    bar = tqdm(dialogues, desc="dialogues", unit="dlg", disable=args.no_progress, file=sys.stderr)
    stopped_early = False
    wanted = set(methods)
    for index, dialogue in enumerate(bar):
        path = cache_dir / f"{index:04d}-{_safe(dialogue.id)}.json"
        done = None
        if path.exists() and not args.fresh:
            saved = json.loads(path.read_text())
            if saved.get("fingerprint") == fingerprint:
                done = saved["result"]
                if saved.get("partial_fingerprints") != partial:  # written before they existed
                    _save(path, fingerprint, partial, done)
                if wanted <= {"original", *done.get("methods_done", [])}:  # Original: always there
                    results.append(done)
                    reused += 1
                    continue
            else:
                old = saved.get("partial_fingerprints") or {}
                kept = [m for group, fp in partial.items() if old.get(group) == fp for m in BASELINE_GROUPS[group]]
                if kept:
                    done = baselines_only(saved["result"], kept)
        over_time = args.max_minutes is not None and time.perf_counter() - started > args.max_minutes * 60
        if args.report_only or over_time:
            if done is not None:
                results.append(done)  # what it has; the missing methods are simply absent
            stopped_early = True
            continue
        shift = ()
        if args.topic_shift:
            others = [d for d in dialogues if d.id != dialogue.id] or dialogues
            other = others[random.Random(args.seed * 7919 + index).randrange(len(others))]  # same on resume
            shift = other.queries[-max(options.shift_turns, cfg.drift.consecutive) :]
        runner.note = lambda stage, i=index: bar.set_postfix_str(f"#{i} {stage}")
        t0 = time.perf_counter()
        result = runner.run(dialogue, index, shift, done=done)
        result["wall_seconds"] = (result.get("wall_seconds") or 0.0) + time.perf_counter() - t0
        _save(path, fingerprint, partial, result)
        results.append(result)
    bar.close()

    if not results:
        print(f"soma bench fidelity: no finished dialogue in {cache_dir} to report on", file=sys.stderr)
        return 1
    report = build_report(results, args, cfg, methods, pair, fingerprint, time.perf_counter() - started, reused)
    report["requested_dialogues"] = len(dialogues)
    report["stopped_early"] = stopped_early
    teacher = pair.teacher
    report["teacher_calls"] = {"made": getattr(teacher, "calls", None), "cached": getattr(teacher, "hits", None)}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    (out_dir / "report.md").write_text(rep.markdown(report))
    report["plots"] = rep.plots(report, out_dir)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    print(rep.markdown(report))
    print(f"report: {out_dir / 'report.json'}, {out_dir / 'report.md'}; plots: {', '.join(report['plots'])}")
    print(
        f"F calls this run: {report['teacher_calls']['made']} made, {report['teacher_calls']['cached']} from the cache"
    )
    return 0


# the baselines, by the method settings they read: none but the compression (untuned), or the LoRA recipe
# as well (tuned); none reads mining, gate or drift. A saved dialogue keeps a group's results while the
# settings it reads are unchanged; random-ft is retrained by DialogueRun when SOMA's training-set size moves
BASELINE_GROUPS = {
    "untuned": ("original", "surrogate", "history-prefix", "compressed-prefix"),
    "tuned": ("history-ft", "random-ft"),
}
UNREAD_SECTIONS = {"untuned": ("mining", "gate", "drift", "lora"), "tuned": ("mining", "gate", "drift")}


def run_fingerprint(args: argparse.Namespace, config: dict) -> str:
    return hashlib.sha256(
        json.dumps(
            [
                args.pair,
                config,
                args.answer_tokens,
                args.seed,
                args.topic_shift,
                args.teacher_repetition_penalty,
                args.max_turns,
            ],
            sort_keys=True,
        ).encode()
    ).hexdigest()[:16]


# settings added after finished results were saved, at the value that does what the code did before they
# existed: at that value they are left out of the fingerprints, so those results stay valid
NEUTRAL_SETTINGS = {("gate", "score_tokens"): 0}


def fingerprint_config(cfg: MethodConfig) -> dict[str, Any]:
    """The method config as the fingerprints see it: every setting but those at their neutral value."""
    config = cfg.model_dump(mode="json")
    for (section, key), neutral in NEUTRAL_SETTINGS.items():
        if config[section].get(key) == neutral:
            config[section] = {k: v for k, v in config[section].items() if k != key}
    return config


def partial_fingerprints(args: argparse.Namespace, cfg: MethodConfig) -> dict[str, str]:
    """Per baseline group, the fingerprint of the run without the method settings the group never reads."""
    config = fingerprint_config(cfg)
    return {
        group: run_fingerprint(args, {k: v for k, v in config.items() if k not in UNREAD_SECTIONS[group]})
        for group in BASELINE_GROUPS
    }


def baselines_only(result: dict, methods: Sequence[str]) -> dict:
    """A saved dialogue result cut to `methods` (baselines whose settings did not change)."""
    kept = dict(result)
    for key in ("answers", "tokens", "adaptation", "seconds", "finish", "teacher_by_turn"):
        kept[key] = {m: v for m, v in (result.get(key) or {}).items() if m in methods}
    kept["methods_done"] = [m for m in result.get("methods_done", []) if m in methods]
    if "history-prefix" not in methods:
        kept.pop("router_confidence", None)  # history-prefix's: recomputed with it
    kept["wall_seconds"] = sum(kept["seconds"].values())
    return kept


def _save(path: Path, fingerprint: str, partial: dict[str, str], result: dict) -> None:
    tmp = path.with_suffix(".tmp")
    payload = {"fingerprint": fingerprint, "partial_fingerprints": partial, "result": result}
    tmp.write_text(json.dumps(payload, ensure_ascii=False))
    os.replace(tmp, path)


def build_report(results, args, cfg: MethodConfig, methods, pair, fingerprint, wall, reused) -> dict[str, Any]:
    router = None
    if "router" in methods:
        served = [s for d in results for s in d.get("adaptation", {}).get("soma", {}).get("served_by", [])]
        share = served.count("teacher") / len(served) if served else 0.0
        router = rep.calibrate_router(results, share)  # reads no scores: score once, after it
    rep.score_answers(results, methods, pair.encoder.encode, token_encode=pair.encoder.token_embeddings)
    summary = rep.summarise(results, methods, args.seed)
    shift = rep.topic_shift_summary(results)
    extra = rep.analyses(results, summary, methods, cfg, pair.encoder.encode, args.seed, report_size=40)
    return {
        "schema": "soma.bench.fidelity/2",
        "pair": args.pair,
        "teacher": pair.teacher_model,
        "surrogate": pair.surrogate_model,
        "teacher_decoding": {"greedy": True, "repetition_penalty": args.teacher_repetition_penalty},
        "datasets": [str(p) for p in args.dataset],
        "ids": str(args.ids) if args.ids else None,
        "dialogues": len(results),
        "reused_dialogues": reused,
        "min_turns": args.min_turns,
        "max_turns": args.max_turns,
        "methods": list(methods),
        "budget": args.budget,
        "config": cfg.model_dump(mode="json"),
        "outside_paper_ranges": cfg.outside_paper_ranges(),
        "answer_tokens": args.answer_tokens,
        "seed": args.seed,
        "fingerprint": fingerprint,
        "wall_seconds": wall,
        "dialogue_seconds": sum(d.get("wall_seconds") or 0.0 for d in results),
        "summary": summary,
        "targets": rep.targets(summary, shift, results, args.seed, degeneracy=extra["degeneracy"]),
        "gate_bounds": rep.gate_counterfactuals(results, cfg),
        "topic_shift": shift,
        "router": router,
        "per_turn": rep.per_turn_rows(results),
        "per_dialogue": [
            {k: d.get(k) for k in PER_DIALOGUE_KEYS} | {"wall_seconds": d.get("wall_seconds")} for d in results
        ],
        **extra,
    }


PER_DIALOGUE_KEYS = (
    "id",
    "dataset",
    "task",
    "turns",
    "warm_turns",
    "post_turns",
    "novel_turns",
    "adaptation",
    "tokens",
    "teacher_by_turn",
    "finish",
    "seconds",
)
