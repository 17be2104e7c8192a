"""Scoring and statistics of `soma bench fidelity` on synthetic results (no models)."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from soma.algo.config import MethodConfig
from soma.bench import fidelity_report as rep
from soma.bench.dialogues import DatasetError, read_dialogues, select
from soma.bench.fidelity import method_config, parse_methods
from soma.bench.fidelity_cli import BUDGETS, METHODS, PAIR_NAMES, add_arguments


def _encode(texts):
    """A deterministic bag-of-letters embedding: equal texts → cosine 1."""
    out = torch.zeros(len(texts), 26)
    for i, t in enumerate(texts):
        for ch in t.lower():
            if "a" <= ch <= "z":
                out[i, ord(ch) - 97] += 1
    return torch.nn.functional.normalize(out + 1e-3, dim=-1)


def _dialogue(i, soma_answer, prefix_answer, confidence):
    return {
        "id": f"d{i}",
        "answers": {
            "original": {"3": "the green apple"},
            "soma": {"3": soma_answer},
            "history-prefix": {"3": prefix_answer},
        },
        "router_confidence": {"3": confidence},
        "adaptation": {
            "soma": {"served_by": ["surrogate"], "accepted": True, "switch_turn": 3, "seconds": {"mining": 2.0}}
        },
        "original": [{}, {}, {"prompt_tokens": 100, "completion_tokens": 10}],
        "tokens": {"history-prefix": {"surrogate_prompt": 90, "surrogate_completion": 9}},
    }


def test_bootstrap_interval_contains_mean_and_narrows():
    mean, low, high = rep.bootstrap_mean([0.5] * 10)
    assert mean == low == high == 0.5
    values = [0.1 * i for i in range(10)]
    mean, low, high = rep.bootstrap_mean(values, seed=1)
    assert low < mean < high and mean == pytest.approx(0.45)
    assert math.isnan(rep.bootstrap_mean([])[0])


def test_scores_and_paired_differences():
    dialogues = [_dialogue(i, "the green apple", "a red car", -0.5) for i in range(4)]
    rep.score_answers(dialogues, ["original", "soma", "history-prefix"], _encode)
    assert dialogues[0]["scores"]["soma"]["3"]["cosine"] == pytest.approx(1.0, abs=1e-4)
    assert dialogues[0]["scores"]["soma"]["3"]["rouge_l"] == pytest.approx(1.0)
    summary = rep.summarise(dialogues, ["original", "soma", "history-prefix"], seed=0)
    diff = summary["history-prefix"]["soma_minus"]
    assert diff["mean"] > 0 and diff["ci"][0] > 0 and diff["dialogues"] == 4
    assert summary["soma"]["switch_rate"] == 1.0 and summary["soma"]["adaptation_seconds"]["total"] == 2.0
    goals = {t["target"]: t for t in rep.targets(summary, None)}
    assert goals["soma − history-prefix: 95% CI above 0"]["met"] is True
    assert goals["soma − history-ft: 95% CI above 0"]["met"] is None  # not run


def test_router_sends_the_least_confident_share_to_the_teacher():
    dialogues = [_dialogue(i, "x", f"guess {i}", confidence=-float(i)) for i in range(10)]
    info = rep.calibrate_router(dialogues, teacher_share=0.3)
    assert info["teacher_share"] == pytest.approx(0.3)
    to_teacher = [d["id"] for d in dialogues if d["answers"]["router"]["3"] == "the green apple"]
    assert to_teacher == ["d7", "d8", "d9"]  # the three lowest confidences
    assert dialogues[9]["tokens"]["router"]["teacher_completion"] == 10  # F re-answered this turn
    assert dialogues[0]["tokens"]["router"]["teacher_completion"] == 0
    assert dialogues[0]["tokens"]["router"]["surrogate_completion"] == 9  # G answered first (a cascade)
    none = rep.calibrate_router(dialogues, teacher_share=0.0)
    assert none["teacher_share"] == 0.0


def test_topic_shift_rates():
    runs = [
        {
            "topic_shift": {
                "own_tail_rolled_back": False,
                "own_tail_locality": [0.5],
                "shifted_tail_rolled_back": True,
                "shifted_tail_locality": [0.0, 0.1],
            }
        },
        {
            "topic_shift": {
                "own_tail_rolled_back": True,
                "own_tail_locality": [0.1, 0.1],
                "shifted_tail_rolled_back": False,
                "shifted_tail_locality": [0.4, 0.0],
            }
        },
    ]
    s = rep.topic_shift_summary(runs)
    assert s["detection_rate"] == 0.5 and s["false_rollback_rate"] == 0.5 and s["shifted_tail_turns"] == 4


def test_gate_counterfactuals_and_false_switches():
    d = {
        "adaptation": {"soma": {"gaps_old": [0.5, 0.6, 0.55], "gaps_new": [0.2, 0.3, 0.25]}},
        "scores": {"soma": {"3": {"cosine": 0.7}}, "history-prefix": {"3": {"cosine": 0.8}}},
    }
    out = rep.gate_counterfactuals([d], MethodConfig())
    assert out["soma"]["none"] == {"accept_rate": 1.0, "false_switch_rate": 1.0, "sessions": 1}
    assert out["soma"]["hoeffding"]["accept_rate"] == 0.0  # γ_B = sqrt(2 ln 10 / 3) > 1


def test_dataset_loading_and_selection(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"id": f"x{i}", "turns": [{"user": f"q{j}", "reference": None} for j in range(i + 1)]} for i in range(6)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert len(read_dialogues(path)) == 6
    chosen = select([path], 2, min_turns=4, seed=3)
    assert len(chosen) == 2 and all(len(d.queries) >= 4 for d in chosen)
    assert [d.id for d in chosen] == [d.id for d in select([path], 2, min_turns=4, seed=3)]
    with pytest.raises(DatasetError, match="at least 9 turns"):
        select([path], 2, min_turns=9, seed=0)
    path.write_text('{"id": "y", "turns": [{"user": ""}]}\n')
    with pytest.raises(DatasetError, match="d.jsonl:1"):
        read_dialogues(path)


def test_cli_choices_match_the_code_and_settings_apply():
    from soma.algo.config import PRESETS
    from soma.bench.pair import PAIRS

    assert set(BUDGETS) == set(PRESETS) and set(PAIR_NAMES) == set(PAIRS)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--budget", "tiny", "--set", "mining.steps=3", "--set", "gate.bound=bernstein"])
    cfg = method_config(args)
    assert cfg.mining.steps == 3 and cfg.gate.bound == "bernstein" and cfg.warm_turns == 2
    with pytest.raises(ValueError, match="KEY=VALUE"):
        method_config(parser.parse_args(["--set", "mining.steps"]))
    assert parse_methods("soma,router")[0] == "original" and "history-prefix" in parse_methods("router")
    assert set(parse_methods(",".join(METHODS))) == set(METHODS)
