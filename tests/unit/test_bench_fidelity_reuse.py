"""Which finished work a fidelity rerun keeps: the baselines survive a change to SOMA-only settings."""

from __future__ import annotations

import argparse

from soma.algo.config import preset
from soma.bench.fidelity import BASELINE_METHODS, baseline_config, baselines_only, run_fingerprint

ARGS = argparse.Namespace(
    pair="cpu", answer_tokens=96, seed=0, topic_shift=False, teacher_repetition_penalty=1.15, max_turns=10
)


def _fingerprints(cfg):
    return run_fingerprint(ARGS, cfg.model_dump(mode="json")), run_fingerprint(ARGS, baseline_config(cfg))


def test_soma_only_settings_change_the_run_fingerprint_but_not_the_baselines():
    cfg = preset("cpu")
    full, base = _fingerprints(cfg)
    for change in ({"gate.epsilon": 0.2}, {"mining.mined_pairs": 0}, {"drift.window": 9}):
        other_full, other_base = _fingerprints(cfg.with_changes(change))
        assert other_full != full and other_base == base, change
    for change in ({"lora.lr": 3e-4}, {"compression.recent_turns": 3}):
        other_full, other_base = _fingerprints(cfg.with_changes(change))
        assert other_full != full and other_base != base, change  # history-ft and compressed-prefix read these


def test_baselines_only_drops_every_soma_result():
    result = {
        "id": "d",
        "answers": {m: {"5": m} for m in (*BASELINE_METHODS, "soma", "soma@served", "soma-full")},
        "seconds": {m: 1.0 for m in (*BASELINE_METHODS, "soma")},
        "adaptation": {"soma": {"accepted": True}, "history-ft": {"seconds": 1}, "random-ft": {"size": 2}},
        "tokens": {"soma@served": {}, "original": {}},
        "teacher_by_turn": {"soma@served": [1], "original": [2]},
        "finish": {"soma": {}, "surrogate": {}},
        "methods_done": [*BASELINE_METHODS, "soma", "soma-full", "router"],
        "router_confidence": {"5": -1.0},
        "wall_seconds": 99.0,
    }
    kept = baselines_only(result)
    for key in ("answers", "seconds", "adaptation", "tokens", "teacher_by_turn", "finish"):
        assert not {m for m in kept[key] if m.startswith("soma")}, key
    assert kept["answers"]["history-prefix"] == {"5": "history-prefix"}
    assert sorted(kept["methods_done"]) == sorted(BASELINE_METHODS)
    assert kept["router_confidence"] == {"5": -1.0}  # history-prefix's, which the router reads
    assert kept["wall_seconds"] == len(BASELINE_METHODS)
    assert "soma" in result["answers"]  # the saved result itself is left alone
