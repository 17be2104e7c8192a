"""Which finished work a fidelity rerun keeps: a baseline survives a change to settings it never reads."""

from __future__ import annotations

import argparse

from soma.algo.config import preset
from soma.bench.fidelity import (
    BASELINE_GROUPS,
    baselines_only,
    fingerprint_config,
    method_config,
    partial_fingerprints,
    run_fingerprint,
)

ARGS = argparse.Namespace(
    pair="cpu", answer_tokens=96, seed=0, topic_shift=False, teacher_repetition_penalty=1.15, max_turns=10
)


def _changed(cfg, change) -> set[str]:
    """The fingerprints (run, and per baseline group) that `change` moves."""
    other = cfg.with_changes(change)
    moved = {g for g, fp in partial_fingerprints(ARGS, other).items() if fp != partial_fingerprints(ARGS, cfg)[g]}
    if run_fingerprint(ARGS, fingerprint_config(other)) != run_fingerprint(ARGS, fingerprint_config(cfg)):
        moved.add("run")
    return moved


def test_each_setting_reruns_only_the_methods_that_read_it():
    cfg = preset("cpu")
    for change in ({"gate.epsilon": 0.2}, {"mining.mined_pairs": 4}, {"drift.window": 9}, {"gate.score_tokens": 48}):
        assert _changed(cfg, change) == {"run"}, change  # SOMA only
    assert _changed(cfg, {"lora.lr": 3e-4}) == {"run", "tuned"}  # history-ft and random-ft train with it
    assert _changed(cfg, {"compression.recent_turns": 3}) == {"run", "tuned", "untuned"}  # compressed-prefix
    assert _changed(cfg, {"warm_turns": 3}) == {"run", "tuned", "untuned"}  # every method's post-switch turns


def test_baselines_only_keeps_exactly_the_named_methods():
    every = (*BASELINE_GROUPS["untuned"], *BASELINE_GROUPS["tuned"], "soma", "soma@served", "soma-full")
    result = {
        "id": "d",
        "answers": {m: {"5": m} for m in every},
        "seconds": {m: 1.0 for m in every if "@" not in m},
        "adaptation": {"soma": {"accepted": True}, "history-ft": {"seconds": 1}, "random-ft": {"size": 2}},
        "tokens": {"soma@served": {}, "original": {}},
        "teacher_by_turn": {"soma@served": [1], "original": [2]},
        "finish": {"soma": {}, "surrogate": {}},
        "methods_done": [*every, "router"],
        "router_confidence": {"5": -1.0},
        "wall_seconds": 99.0,
    }
    untuned = BASELINE_GROUPS["untuned"]
    kept = baselines_only(result, untuned)
    for key in ("answers", "seconds", "adaptation", "tokens", "teacher_by_turn", "finish"):
        assert set(kept[key]) <= set(untuned), key
    assert kept["answers"]["history-prefix"] == {"5": "history-prefix"}
    assert sorted(kept["methods_done"]) == sorted(untuned)
    assert kept["router_confidence"] == {"5": -1.0}  # history-prefix's, which the router reads
    assert kept["wall_seconds"] == len(untuned)
    assert "router_confidence" not in baselines_only(result, BASELINE_GROUPS["tuned"])
    assert "soma" in result["answers"]  # the saved result itself is left alone


def test_the_kept_report_set_run_is_of_the_shipped_defaults():
    """docs/bench/fidelity-report/ was run with the `cpu` budget; its dialogues' fingerprint is what the
    benchmark computes now from the command's defaults, so `--report-only` rebuilds that report (a
    setting added since, at its neutral value, leaves the fingerprint alone). When a default changes, this
    fails until the report set is rerun with it."""
    import json
    from pathlib import Path

    from soma.bench.fidelity_cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--ids", "docs/bench/sets/report.txt", "--dialogues", "40"])
    assert args.budget == "cpu"
    dialogues = Path(__file__).resolve().parents[2] / "docs" / "bench" / "fidelity-report" / "dialogues"
    saved = {json.loads(p.read_text())["fingerprint"] for p in dialogues.glob("*.json")}
    assert len(list(dialogues.glob("*.json"))) == 40
    assert saved == {run_fingerprint(args, fingerprint_config(method_config(args)))}
