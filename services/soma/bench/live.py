"""`soma bench live`: issue 4's serving targets, measured in one run against baselines of the same run.

1. Adapter cache: a miss (store read, sha256 check, PEFT load) and a hit (LRU lookup + adapter
   selection) for an adapter of at least 10 MB on the real surrogate, in-process.
2. Live session: a W+6-turn dialogue through the gRPC API of `soma serve --target all` with
   live adaptation (the `cpu` budget by default); the turn at which the surrogate takes over.
3. Baseline: the same dialogue on a second server with live adaptation off. Teacher turns that
   ran while adaptation jobs were running are compared with the same turns here (≤ 1.5×), and
   surrogate turns with the teacher's same turn here (≤ 0.5×).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from importlib import resources
from pathlib import Path

from soma.client import DialogueClient, load_user_turns
from soma.config import load_settings
from soma.launcher import start_server
from soma.v1 import common_pb2

PHASE = common_pb2.SessionPhase.Name
SERVED = common_pb2.ServedBy.Name


def bundled_live_dialogue() -> Path:
    return Path(str(resources.files("soma.bench").joinpath("live_dialogue.jsonl")))


def measure_cache(settings, target_mb: float, hits: int) -> dict:
    """Miss and hit cost of the surrogate's adapter cache for an adapter of ≥ target_mb."""
    import torch
    from transformers import AutoModelForCausalLM

    from soma.algo.config import LoraConfig
    from soma.algo.lora_train import SessionAdapters
    from soma.models import resolve_model
    from soma.storage.adapter_store import LocalAdapterStore, build_manifest
    from soma.surrogate.adapter_cache import AdapterCache

    path = resolve_model(settings.surrogate.model, settings.model_cache)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    targets = set(LoraConfig().target_modules)
    per_rank = sum(  # float32 A (r × in) and B (out × r) of every targeted projection
        4 * (m.in_features + m.out_features)
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in targets
    )
    rank = max(1, math.ceil(target_mb * 1e6 / per_rank))
    cfg = LoraConfig(rank=rank, alpha=2 * rank)
    adapters = SessionAdapters(model, cfg)
    adapters.new("src", cfg)
    with torch.no_grad():
        for p in adapters.trainable("src"):
            p.normal_(0, 0.01)
    weights, config = adapters.export("src")
    adapters.delete("src")
    with tempfile.TemporaryDirectory(prefix="soma-bench-cache-") as tmp:
        store = LocalAdapterStore(Path(tmp))
        sessions = [f"bench-{i}" for i in range(5)]
        for sid in sessions:
            manifest = build_manifest(sid, 1, weights, config, base_model=settings.surrogate.model, rank=rank)
            store.put(manifest, weights, config)
        cache = AdapterCache(
            adapters, store, max_count=len(sessions), max_bytes=10**10, base_model=settings.surrogate.model
        )
        miss_ms = []
        for sid in sessions:
            t0 = time.perf_counter()
            name = cache.acquire(sid, 1)
            with adapters.using(name):
                pass
            miss_ms.append((time.perf_counter() - t0) * 1000)
        hit_ms = []
        for i in range(hits):
            t0 = time.perf_counter()
            name = cache.acquire(sessions[i % len(sessions)], 1)
            with adapters.using(name):
                pass
            hit_ms.append((time.perf_counter() - t0) * 1000)
    return {
        "adapter_bytes": len(weights),
        "rank": rank,
        "miss_ms": miss_ms,
        "hit_ms_median": statistics.median(hit_ms),
        "hit_ms_p99": sorted(hit_ms)[min(len(hit_ms) - 1, int(0.99 * len(hit_ms)))],
        "miss_ms_median": statistics.median(miss_ms),
        "miss_ms_max": max(miss_ms),
    }


def play(
    address: str, queries: list[str], max_new_tokens: int, think_s: float, session_id: str, api_key: str | None = None
) -> list[dict]:
    """Play the dialogue; each turn notes the phase the session was in when the turn started."""
    rows = []
    with DialogueClient(address, api_key) as client:
        client.open_session(session_id=session_id)
        for query in queries:
            before = client.get_session(session_id).session
            result = client.chat(session_id, query, max_new_tokens=max_new_tokens)
            r = result.record
            rows.append(
                {
                    "turn": r.turn_index,
                    "phase_before": PHASE(before.phase).removeprefix("SESSION_PHASE_"),
                    "served_by": SERVED(r.served_by).removeprefix("SERVED_BY_"),
                    "phase_after": PHASE(r.phase).removeprefix("SESSION_PHASE_"),
                    "latency_ms": r.latency_ms,
                    "model_latency_ms": r.model_latency_ms,
                    "completion_tokens": r.completion_tokens,
                    "prompt_tokens": r.prompt_tokens,
                    "route_reason": r.route_reason,
                }
            )
            print(
                f"  turn {r.turn_index:2d}  {rows[-1]['served_by']:9s} {rows[-1]['phase_after']:11s} "
                f"{r.latency_ms:8.0f} ms  {r.completion_tokens:3d} tok  (before: {rows[-1]['phase_before']})",
                flush=True,
            )
            if think_s:
                time.sleep(think_s)
    return rows


def run_bench_live(args: argparse.Namespace) -> int:
    from soma.models.prepare import prepare_model

    settings = load_settings(args.config)
    for name in (settings.teacher.model, settings.surrogate.model, settings.gate.encoder):
        prepare_model(name, settings.model_cache)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    from soma.algo.config import preset

    method = preset(args.budget or settings.method.budget).with_changes(settings.method.overrides)
    w = method.warm_turns
    queries = load_user_turns(args.dialogue or bundled_live_dialogue())
    if len(queries) < w + 6:
        raise SystemExit(f"the dialogue has {len(queries)} turns; W + 6 = {w + 6} are needed")
    queries = queries[: w + args.turns_after]
    print(f"adapter cache: miss and hit for a ≥ {args.adapter_mb} MB adapter ...", flush=True)
    cache = measure_cache(settings, args.adapter_mb, args.hits)
    print(
        f"  {cache['adapter_bytes'] / 1e6:.1f} MB (rank {cache['rank']}): miss median {cache['miss_ms_median']:.0f} ms,"
        f" hit median {cache['hit_ms_median']:.2f} ms",
        flush=True,
    )
    extra = ["--config", str(args.config)] if args.config else []
    runs = {}
    for name, adaptation in (("baseline", "off"), ("live", "embedded")):
        with tempfile.TemporaryDirectory(prefix=f"soma-bench-{name}-") as tmp:
            env = {
                "SOMA_DIALOGUE__SESSION_DB": str(Path(tmp) / "sessions.db"),
                "SOMA_ADAPTERS__LOCAL_DIR": str(Path(tmp) / "adapters"),
                "SOMA_JOBS__LOCAL_DIR": str(Path(tmp) / "jobs"),
                "SOMA_ADAPTATION__MODE": adaptation,
                "SOMA_METHOD__BUDGET": args.budget or settings.method.budget,
            }
            if args.gate_epsilon is not None:
                env["SOMA_METHOD__OVERRIDES"] = json.dumps(
                    {**settings.method.overrides, "gate.epsilon": args.gate_epsilon}
                )
            print(f"{name}: soma serve --target all (adaptation {adaptation}) ...", flush=True)
            with start_server("all", extra, env=env, log_path=out / f"server-{name}.log") as server:
                started = time.perf_counter()
                runs[name] = play(
                    server.address, queries, args.max_new_tokens, args.think_s, f"bench-{name}", server.api_key
                )
                print(f"  {time.perf_counter() - started:.0f} s", flush=True)
    report = summarize(runs, cache, w, args)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    md = to_markdown(report)
    from soma.bench.report_plots import plot_live

    plot_live(report, out / "latency.png")
    (out / "report.md").write_text(md + "\n![turn latency: baseline and live](latency.png)\n")
    print(md)
    return 0


def summarize(runs: dict, cache: dict, w: int, args) -> dict:
    base = {r["turn"]: r for r in runs["baseline"]}
    live = runs["live"]
    switch = next((r["turn"] for r in live if r["served_by"] == "SURROGATE"), None)
    during = [r for r in live if r["served_by"] == "TEACHER" and r["phase_before"] in ("ADAPTING", "GATING")]
    f_ratio = [r["latency_ms"] / base[r["turn"]]["latency_ms"] for r in during]
    f_tok_ratio = [
        (r["model_latency_ms"] / max(1, r["completion_tokens"]))
        / (base[r["turn"]]["model_latency_ms"] / max(1, base[r["turn"]]["completion_tokens"]))
        for r in during
    ]
    g_turns = [r for r in live if r["served_by"] == "SURROGATE"]
    g_ratio = [r["latency_ms"] / base[r["turn"]]["latency_ms"] for r in g_turns]
    return {
        "warm_turns": w,
        "budget": args.budget or "method.budget",
        "max_new_tokens": args.max_new_tokens,
        "think_s": args.think_s,
        "gate_epsilon": args.gate_epsilon,
        "cache": cache,
        "runs": runs,
        "switch_turn": switch,
        "teacher_during_adaptation": {
            "turns": [r["turn"] for r in during],
            "latency_ratio": f_ratio,
            "latency_ratio_median": statistics.median(f_ratio) if f_ratio else None,
            "ms_per_token_ratio_median": statistics.median(f_tok_ratio) if f_tok_ratio else None,
        },
        "surrogate_vs_teacher": {
            "turns": [r["turn"] for r in g_turns],
            "latency_ratio": g_ratio,
            "latency_ratio_median": statistics.median(g_ratio) if g_ratio else None,
        },
        "targets": {
            "switch_by_turn": w + 3,
            "switch_ok": switch is not None and switch <= w + 3,
            "teacher_latency_ratio_max": 1.5,
            "teacher_latency_ok": bool(f_ratio) and statistics.median(f_ratio) <= 1.5,
            "surrogate_ratio_max": 0.5,
            "surrogate_ok": bool(g_ratio) and statistics.median(g_ratio) <= 0.5,
            "cache_hit_ms_max": 20.0,
            "cache_hit_ok": cache["hit_ms_median"] <= 20.0,
            "cache_miss_ms_max": 1000.0,
            "cache_miss_ok": cache["miss_ms_max"] <= 1000.0,
        },
    }


def _fmt(v, spec=".2f", none="—"):
    return none if v is None else format(v, spec)


def to_markdown(r: dict) -> str:
    t, c = r["targets"], r["cache"]
    fd, sg = r["teacher_during_adaptation"], r["surrogate_vs_teacher"]
    lines = [
        f"# soma bench live (W = {r['warm_turns']}, budget {r['budget']}, answers ≤ {r['max_new_tokens']} tokens,"
        f" think time {r['think_s']} s, gate.epsilon {_fmt(r['gate_epsilon'], 'g', 'default')})",
        "",
        "| measure | value | target | met |",
        "|---|---|---|---|",
        f"| first turn served by the surrogate | {r['switch_turn'] or 'none'} | ≤ W+3 = {t['switch_by_turn']} |"
        f" {'yes' if t['switch_ok'] else 'no'} |",
        f"| teacher turn latency while adaptation runs ÷ no adaptation (median over turns {fd['turns']}) |"
        f" {_fmt(fd['latency_ratio_median'])}× | ≤ 1.5× | {'yes' if t['teacher_latency_ok'] else 'no'} |",
        f"| same, model ms per token | {_fmt(fd['ms_per_token_ratio_median'])}× | | |",
        f"| surrogate turn latency ÷ teacher's at the same turn (median over turns {sg['turns']}) |"
        f" {_fmt(sg['latency_ratio_median'])}× | ≤ 0.5× | {'yes' if t['surrogate_ok'] else 'no'} |",
        f"| adapter cache hit, {c['adapter_bytes'] / 1e6:.1f} MB adapter (median) | {c['hit_ms_median']:.2f} ms |"
        f" ≤ 20 ms | {'yes' if t['cache_hit_ok'] else 'no'} |",
        f"| adapter cache miss (max of {len(c['miss_ms'])}) | {c['miss_ms_max']:.0f} ms | ≤ 1000 ms |"
        f" {'yes' if t['cache_miss_ok'] else 'no'} |",
        "",
        "| turn | baseline: served by | latency ms | live: phase before | served by | latency ms | tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for b, lv in zip(r["runs"]["baseline"], r["runs"]["live"], strict=True):
        lines.append(
            f"| {lv['turn']} | {b['served_by']} | {b['latency_ms']:.0f} | {lv['phase_before']} | {lv['served_by']} |"
            f" {lv['latency_ms']:.0f} | {lv['completion_tokens']} |"
        )
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dialogue", type=Path, help="JSON Lines or text file of user turns (default: bundled)")
    p.add_argument(
        "--budget", choices=("tiny", "cpu", "paper"), default=None, help="method budget (default: method.budget)"
    )
    p.add_argument("--turns-after", type=int, default=6, help="turns after the warm window W (default 6)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--think-s", type=float, default=0.0, help="pause between turns, like a user reading (default 0)")
    p.add_argument(
        "--gate-epsilon", type=float, default=None, help="gate.epsilon of the live run (default: the configured one)"
    )
    p.add_argument("--adapter-mb", type=float, default=10.0)
    p.add_argument("--hits", type=int, default=200)
    p.add_argument("--out", type=Path, default=Path("bench-out/live"))
