"""Scoring and statistics of `soma bench fidelity` on synthetic results (no models)."""

from __future__ import annotations

import argparse
import json
import math
import statistics

import pytest
import torch

from soma.algo.config import MethodConfig
from soma.bench import fidelity_report as rep
from soma.bench import fidelity_savings as sav
from soma.bench import fidelity_stats as stats
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
        "warm_turns": 2,
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


def _token_encode(texts):
    """Fake token states: one bag-of-letters row per word (so equal words match with cosine 1)."""
    return [_encode(t.split()) if t.split() else torch.zeros(0, 26) for t in texts]


def _session(i, originals, soma, prefix, dataset="p4g", warm=2, tokens=(90, 10)):
    """A result dict with Original's answers at every turn and soma/history-prefix on the post-switch turns."""
    post = list(range(warm + 1, len(originals) + 1))
    return {
        "id": f"s{i}",
        "dataset": dataset,
        "turns": len(originals),
        "warm_turns": warm,
        "post_turns": post,
        "original": [
            {"answer": a, "prompt_tokens": tokens[0], "completion_tokens": tokens[1], "finish_reason": "stop"}
            for a in originals
        ],
        "answers": {
            "original": {str(t): originals[t - 1] for t in post},
            "soma": {str(t): a for t, a in zip(post, soma, strict=True)},
            "history-prefix": {str(t): a for t, a in zip(post, prefix, strict=True)},
        },
        "adaptation": {},
        "tokens": {},
    }


def _report(dialogues, summary, **extra):
    """The report keys markdown() and plots() read, around a summary."""
    return {
        "pair": "tiny",
        "teacher": "F",
        "surrogate": "G",
        "dialogues": len(dialogues),
        "datasets": ["x.jsonl"],
        "min_turns": 4,
        "config": {"warm_turns": 2},
        "answer_tokens": 64,
        "seed": 0,
        "budget": "tiny",
        "wall_seconds": 60.0,
        "summary": summary,
        "targets": [],
        "per_turn": rep.per_turn_rows(dialogues),
        **extra,
    }


def test_teacher_degeneracy_overall_per_dataset_and_novel_turns():
    turns = ["hello there friend", "hello there friend", "zebra quokka", "hello there friend"]
    copying = _session(0, turns, ["a", "b", "c"], ["c", "d", "e"], dataset="p4g", warm=1)
    fresh = _session(1, ["alpha", "xyz jump", "quiet mind"], ["x", "y"], ["y", "z"], dataset="wow", warm=1)
    info = stats.degeneracy([copying, fresh], _encode)
    assert info["overall"] == {"share": pytest.approx(2 / 5), "near_copies": 2, "answers": 5}
    assert info["per_dataset"]["p4g"]["share"] == pytest.approx(2 / 3) and info["per_dataset"]["wow"]["share"] == 0
    assert copying["novel_turns"] == ["3"] and fresh["novel_turns"] == ["2", "3"]
    assert (info["novel_post_turns"], info["post_turns"]) == (3, 5)
    assert stats.degenerate_datasets(info) == {"p4g": pytest.approx(2 / 3)}
    assert stats.degeneracy([copying], _encode, threshold=1.5)["overall"]["near_copies"] == 0


def _degeneracy(**shares):
    """A stats.degeneracy() result with the given share per dataset (100 answers each)."""
    per = {k: {"share": v, "near_copies": round(100 * v), "answers": 100} for k, v in shares.items()}
    total = sum(v["near_copies"] for v in per.values())
    return {
        "threshold": 0.95,
        "limit": 0.1,
        "overall": {"share": total / (100 * len(per)), "near_copies": total, "answers": 100 * len(per)},
        "per_dataset": per,
        "novel_post_turns": 10,
        "post_turns": 20,
    }


def test_targets_are_not_judged_while_the_teacher_is_degenerate():
    dialogues = [_dialogue(i, "the green apple", "a red car", -0.5) | {"tokens": {}} for i in range(4)]
    rep.score_answers(dialogues, ["original", "soma", "history-prefix"], _encode)
    summary = rep.summarise(dialogues, ["original", "soma", "history-prefix"], seed=0)
    clean = _degeneracy(p4g=0.05, wow=0.1)
    goals = {t["target"]: t for t in rep.targets(summary, None, dialogues, degeneracy=clean)}
    assert goals["soma − history-prefix: 95% CI above 0"]["met"] is True  # 10% is not above the limit
    degenerate = _degeneracy(p4g=0.05, wow=0.23)
    judged = rep.targets(summary, None, dialogues, degeneracy=degenerate)
    assert judged and all(t["met"] is None for t in judged)
    assert all("not judged: teacher degeneracy 23% > 10% (wow)" in t["measured"] for t in judged)
    assert stats.withhold_verdicts(judged, degenerate) == judged  # applying it twice adds no second note
    text = rep.markdown(_report(dialogues, summary, targets=judged, degeneracy=degenerate))
    assert "**No target is judged**" in text and "wow 23%" in text
    unjudged = rep.targets(summary, None, dialogues)  # markdown withholds the verdicts itself as well
    text = rep.markdown(_report(dialogues, summary, targets=unjudged, degeneracy=degenerate))
    assert "| soma − history-prefix: 95% CI above 0 |" in text and "| yes |" not in text
    assert "No target is judged" not in rep.markdown(_report(dialogues, summary, degeneracy=clean))


def test_detectable_difference_formula_and_power_rows():
    out = stats.detectable_difference([0.1, 0.2, 0.3, 0.4], report_size=16)
    sd = statistics.stdev([0.1, 0.2, 0.3, 0.4])
    assert out["sd"] == pytest.approx(0.1290994, abs=1e-6)
    assert out["mde"] == pytest.approx(2.8 * sd / 2) and out["mde_at_report_size"] == pytest.approx(2.8 * sd / 4)
    assert stats.detectable_difference([0.3])["mde"] is None and stats.detectable_difference([])["sd"] is None
    dialogues = [
        _session(i, ["q", "r", "the green apple"], ["the green apple"], [p])
        for i, p in enumerate(["a red car", "green", "the apple", "blue sky"])
    ]
    rep.score_answers(dialogues, ["original", "soma", "history-prefix"], _encode)
    summary = rep.summarise(dialogues, ["original", "soma", "history-prefix"], seed=0)
    rows = {r["comparison"]: r for r in rep.power(dialogues, summary, report_size=40)}
    assert set(rows) == {"soma − original", "soma − history-prefix"}
    diffs = [d["scores"]["soma"]["3"]["cosine"] - d["scores"]["history-prefix"]["3"]["cosine"] for d in dialogues]
    assert rows["soma − history-prefix"]["mde"] == pytest.approx(2.8 * statistics.stdev(diffs) / 2)
    assert "- soma − history-prefix: n = 4" in "\n".join(stats.power_markdown(list(rows.values())))


def test_bertscore_f1_rewards_content_over_a_template():
    reference = "the green apple tastes sweet and crisp"
    content = "a green apple tastes sweet"
    template = "thanks for that great question about this"
    ref, con, tem = _token_encode([reference, content, template])
    assert rep.bertscore_f1(ref, ref) == pytest.approx(1.0)
    assert rep.bertscore_f1(ref, tem) < rep.bertscore_f1(ref, con) < 1.0
    assert rep.bertscore_f1(ref, torch.zeros(0, 26)) == 0.0
    half = torch.eye(4)  # the candidate has 2 of the reference's 4 (orthogonal) tokens: P = 1, R = 1/2
    assert rep.bertscore_f1(half, half[:2]) == pytest.approx(2 / 3) == rep.bertscore_f1(half[:2], half)
    d = _session(0, ["q", "r", reference], [content], [template])
    rep.score_answers([d], ["original", "soma", "history-prefix"], _encode, token_encode=_token_encode)
    assert d["scores"]["original"]["3"]["bertscore_f1"] == pytest.approx(1.0)
    assert d["scores"]["soma"]["3"]["bertscore_f1"] > d["scores"]["history-prefix"]["3"]["bertscore_f1"]
    summary = rep.summarise([d], ["original", "soma", "history-prefix"], seed=0)
    assert summary["soma"]["bertscore_f1"] == pytest.approx(d["scores"]["soma"]["3"]["bertscore_f1"])
    assert "| BERTScore F1 |" in rep.markdown(_report([d], summary))


def test_summaries_per_dataset_and_on_novel_turns():
    a = _session(0, ["q", "r", "the green apple", "blue sky"], ["the green apple", "red car"], ["x", "y"], "p4g")
    b = _session(1, ["q", "r", "the green apple", "blue sky"], ["the green apple", "red car"], ["x", "y"], "wow")
    a["novel_turns"], b["novel_turns"] = ["4"], ["4"]
    rep.score_answers([a, b], ["original", "soma", "history-prefix"], _encode)
    by = rep.summarise_by_dataset([a, b], ["original", "soma", "history-prefix"], seed=0)
    assert set(by) == {"p4g", "wow"} and by["p4g"]["soma"]["dialogues"] == 1
    novel = rep.summarise_novel([a, b], ["original", "soma", "history-prefix"], seed=0)
    whole = rep.summarise([a, b], ["original", "soma", "history-prefix"], seed=0)
    assert novel["soma"]["turns"] == 2 and whole["soma"]["turns"] == 4
    assert novel["soma"]["cosine"] == pytest.approx(a["scores"]["soma"]["4"]["cosine"])  # turn 3 (a copy) left out
    assert novel["soma"]["cosine"] < whole["soma"]["cosine"]
    del a["dataset"], b["dataset"], a["novel_turns"], b["novel_turns"]
    assert rep.summarise_by_dataset([a, b], ["soma"], 0) == {} and rep.summarise_novel([a, b], ["soma"], 0) == {}


def test_cap_share_per_method():
    d = _session(0, ["q", "r", "s", "t"], ["a", "b"], ["c", "d"])
    d["original"][2]["finish_reason"] = "length"
    d["finish"] = {"original": {"3": "stop", "4": "stop"}, "soma": {"3": "length", "4": "length"}, "x": {}}
    caps = rep.cap_share([d, _session(1, ["q", "r", "s", "t"], ["a", "b"], ["c", "d"])])
    assert caps["original"] == {"share": 0.25, "answers": 4}  # from d['original'], not d['finish']
    assert caps["soma"] == {"share": 1.0, "answers": 2} and "x" not in caps


def test_example_answers_best_median_worst_cut_and_escaped():
    long = "the green apple | " + "x" * 300
    dialogues = [
        _session(i, ["q", "r", "the green apple", "blue sky"], [s, "blue sky"], ["p", "q"])
        for i, s in enumerate(["the green apple", "a red car", "green line\nnext"])
    ]
    dialogues[0]["answers"]["history-prefix"]["3"] = long
    dialogues[2]["novel_turns"] = ["4", "3"]
    rep.score_answers(dialogues, ["original", "soma", "history-prefix"], _encode)
    ex = rep.examples(dialogues)
    assert [e["rank"] for e in ex] == ["best", "median", "worst"]
    assert [e["dialogue"] for e in ex] == ["s0", "s2", "s1"]
    assert ex[1]["turn"] == 4 and ex[0]["turn"] == 3  # the first novel turn, else the first scored turn
    assert len(ex[0]["answers"]["history-prefix"]) == 160 and ex[0]["answers"]["compressed-prefix"] is None
    assert rep.examples(dialogues[:1])[0]["rank"] == "best/median/worst"
    summary = rep.summarise(dialogues, ["original", "soma", "history-prefix"], seed=0)
    text = rep.markdown(_report(dialogues, summary, examples=ex))
    row = next(line for line in text.splitlines() if line.startswith("| best: s0"))
    assert "the green apple \\| xxx" in row and row.count(" | ") == 6


def test_teacher_savings_per_method():
    d = _session(0, ["q", "r", "s", "t"], ["a", "b"], ["c", "d"])
    d["teacher_by_turn"] = {"original": [100, 200, 300, 400], "soma@served": [100, 700, 0, 0]}
    d["adaptation"]["router"] = {"served_by": ["surrogate", "teacher"]}
    assert sav.dialogue_teacher_tokens(d) == {
        "original": 1000,
        "history-prefix": 300,
        "router": 700,
        "soma@served": 800,
    }
    old = _session(1, ["q", "r", "s", "t"], ["a", "b"], ["c", "d"], tokens=(40, 10))  # no teacher_by_turn
    old["adaptation"]["router"] = {"served_by": ["teacher", "teacher"]}
    assert sav.dialogue_teacher_tokens(old) == {"original": 200, "history-prefix": 100, "router": 200}
    out = sav.teacher_savings([d, old])
    assert out["router"]["teacher_tokens"] == 450 and out["router"]["saved"] == pytest.approx(1 - 450 / 600)
    assert out["history-prefix"]["saved"] == pytest.approx(1 - 200 / 600)
    assert out["soma@served"] == {"dialogues": 1, "teacher_tokens": 800, "saved": pytest.approx(0.2)}


def test_break_even_turn():
    assert sav.break_even_turn([10, 20, 30, 40], [10, 60, 0, 0], warm_turns=2) == 4
    assert sav.break_even_turn([10, 20, 30, 40], [10, 60, 30, 40], warm_turns=2) is None
    assert sav.break_even_turn([10, 20], [5, 100], warm_turns=2) is None  # turn 1 is before W
    ds = [_session(i, ["q", "r", "s", "t"], ["a", "b"], ["c", "d"]) for i in range(3)]
    for d, served in zip(ds, [[100, 300, 0, 0], [100, 150, 0, 0], [100, 900, 100, 100]], strict=True):
        d["teacher_by_turn"] = {"original": [100] * 4, "soma@served": served}
    out = sav.break_even(ds)
    assert out["per_dialogue"] == {"s0": 4, "s1": 3, "s2": None}
    assert (out["break_even"], out["dialogues"], out["median_turn"]) == (2, 3, 3.5)
    assert sav.break_even([_session(9, ["q", "r", "s"], ["a"], ["b"])]) is None


def _gated(i, improvement, locality_ok=True):
    d = _session(i, ["q", "r", "s", "t"], ["a", "b"], ["c", "d"], tokens=(90, 10))
    d["adaptation"]["soma"] = {
        "gaps_old": [0.5, 0.5],
        "gaps_new": [0.5 - improvement] * 2,
        "locality_ok": locality_ok,
        "adaptation_teacher_tokens": 50,
        "if_accepted": {"served_by": ["surrogate", "teacher"], "teacher_tokens": [0, 100]},
    }
    d["scores"] = {"soma": {"3": {"cosine": 0.6}, "4": {"cosine": 0.0}}}
    return d


def test_epsilon_curve_trades_tokens_for_similarity_monotonically(tmp_path):
    ds = [_gated(0, 0.0), _gated(1, 0.1), _gated(2, 0.2), _gated(3, 0.2, locality_ok=False)]
    curve = sav.epsilon_curve(ds, MethodConfig())  # bound "none": accept iff mean improvement ≥ ε
    pts = curve["points"]
    assert [p["epsilon"] for p in pts] == pytest.approx([-0.2 + 0.05 * i for i in range(11)])
    for a, b in zip(pts, pts[1:], strict=False):
        assert b["accept_rate"] <= a["accept_rate"] and b["saved"] <= a["saved"] and b["similarity"] >= a["similarity"]
    # accepted: F = 200 warm + 50 adaptation + 100 (turn 4 back to F) = 350, similarity (0.6 + 1) / 2
    # rejected: F = 400 + 50 = 450, similarity 1
    assert pts[0]["accept_rate"] == 0.75 and pts[0]["saved"] == pytest.approx(1 - (3 * 350 + 450) / 4 / 400)
    assert pts[0]["similarity"] == pytest.approx((3 * 0.8 + 1.0) / 4)
    assert pts[-1] == {"epsilon": 0.3, "accept_rate": 0.0, "saved": pytest.approx(-0.125), "similarity": 1.0}
    assert curve["as_served"] is None
    for d in ds:
        d["teacher_by_turn"] = {"original": [100] * 4, "soma@served": [100, 150, 0, 50]}
        d["scores"]["soma@served"] = {"3": {"cosine": 0.5}, "4": {"cosine": 1.0}}
    served = sav.epsilon_curve(ds, MethodConfig())["as_served"]
    assert served == {"dialogues": 4, "saved": pytest.approx(0.25), "similarity": pytest.approx(0.75)}
    assert sav.epsilon_curve([_session(9, ["q", "r", "s"], ["a"], ["b"])], MethodConfig()) is None


def test_analyses_feed_markdown_and_the_savings_plot(tmp_path):
    ds = [_gated(0, 0.0), _gated(1, 0.2)]
    ds[1]["dataset"] = "wow"
    for d in ds:
        for o, a in zip(d["original"], ["q", "r", "the green apple", "sky"], strict=True):
            o["answer"] = a
        d["answers"]["original"] = {"3": "the green apple", "4": "sky"}
        d["answers"]["soma@served"] = {"3": "the green apple", "4": "sky"}
        d["teacher_by_turn"] = {"original": [100] * 4, "soma@served": [100, 150, 0, 50]}
    methods = ["original", "soma", "history-prefix"]
    rep.score_answers(ds, methods, _encode, token_encode=_token_encode)
    summary = rep.summarise(ds, methods, seed=0)
    extra = rep.analyses(ds, summary, methods, MethodConfig(), _encode, seed=0)
    assert set(extra) == {
        "degeneracy",
        "novel_summary",
        "by_dataset",
        "power",
        "cap_share",
        "examples",
        "savings",
        "break_even",
        "epsilon_curve",
    }
    assert ds[0]["novel_turns"] == ["3", "4"] and extra["epsilon_curve"]["as_served"]["dialogues"] == 2
    report = _report(ds, summary, **extra)
    text = rep.markdown(report)
    for heading in (
        "## Teacher degeneracy",
        "## Novel turns only",
        "## Dataset p4g",
        "## Dataset wow",
        "## Power",
        "## Example answers",
        "## Teacher tokens saved",
        "### ε sweep",
        "generation 1's gate only",
    ):
        assert heading.lower() in text.lower(), heading
    assert "savings.png" in rep.plots(report, tmp_path) and (tmp_path / "savings.png").stat().st_size > 0
    report.pop("epsilon_curve")
    assert "savings.png" not in rep.plots(report, tmp_path)
    report["by_dataset"] = {"p4g": extra["by_dataset"]["p4g"]}  # one dataset: the main table says it all
    assert "## Dataset" not in rep.markdown(report)
