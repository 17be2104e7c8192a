"""Scoring and reporting of a fidelity run: similarities, paired bootstrap CIs, targets, plots.

Primary metric: MiniLM cosine of each post-switch answer to Original's answer at the same
turn. Means and differences are taken per dialogue first and bootstrapped over dialogues
(answers within a dialogue are not independent), 2000 resamples, 95% percentile intervals.
Secondary: ROUGE-L and a BERTScore-style F1 over the encoder's token states, which a copied
template does not satisfy as easily as the mean-pooled cosine.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rouge_score import rouge_scorer

from soma.bench import fidelity_savings as savings
from soma.bench import fidelity_stats as stats

RESAMPLES = 2000
BETWEEN = (("history-ft", "history-prefix"), ("history-prefix", "surrogate"))  # baseline-vs-baseline targets
EXAMPLE_METHODS = ("original", "soma", "history-prefix", "compressed-prefix")


def bootstrap_mean(values: Sequence[float], seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of a 95% percentile bootstrap interval of the mean."""
    if not values:
        return (math.nan, math.nan, math.nan)
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(RESAMPLES))
    return (sum(values) / n, means[int(0.025 * RESAMPLES)], means[int(0.975 * RESAMPLES) - 1])


def bertscore_f1(reference: Any, candidate: Any) -> float:
    """BERTScore-style F1 (no idf) of two [n, d] sets of unit token embeddings, by greedy max-cosine matching.

    Precision: each candidate token's best cosine to a reference token, averaged; recall the other way.
    A template that shares the reference's topic but not its content matches few of its tokens.
    """
    if len(reference) == 0 or len(candidate) == 0:
        return 1.0 if len(reference) == len(candidate) else 0.0
    sim = candidate @ reference.T
    precision = float(sim.max(dim=1).values.mean())
    recall = float(sim.max(dim=0).values.mean())
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def score_answers(
    dialogues: list[dict], methods: Sequence[str], encode: Callable, token_encode: Callable | None = None
) -> None:
    """Add dialogue['scores'][method][turn] = {'cosine', 'rouge_l'[, 'bertscore_f1']} (in place).

    token_encode (e.g. SentenceEncoder.token_embeddings: texts → list of [n_i, d] unit token
    states) adds the BERTScore-style F1.
    """
    rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    for d in dialogues:
        reference = d["answers"]["original"]
        d["scores"] = {}
        ref_tokens = dict(zip(reference, token_encode(list(reference.values())), strict=True)) if token_encode else {}
        keys = [m for m in d["answers"] if m in methods or m.split("@")[0] in methods]
        for method in keys:
            answers = d["answers"][method]
            turns = [t for t in reference if t in answers]
            if not turns:
                continue
            emb_ref = encode([reference[t] for t in turns])
            emb_ans = encode([answers[t] for t in turns])
            cos = (emb_ref * emb_ans).sum(-1).clamp(-1, 1).tolist()
            d["scores"][method] = {
                t: {"cosine": c, "rouge_l": rouge.score(reference[t], answers[t])["rougeL"].fmeasure}
                for t, c in zip(turns, cos, strict=True)
            }
            if token_encode:
                tokens = token_encode([answers[t] for t in turns])
                for t, tok in zip(turns, tokens, strict=True):
                    d["scores"][method][t]["bertscore_f1"] = bertscore_f1(ref_tokens[t], tok)


def calibrate_router(dialogues: list[dict], teacher_share: float) -> dict[str, Any]:
    """RouteLLM-style per-turn router: the least confident history-prefix turns go to F.

    Confidence = mean log-probability of G's own answer; the threshold is the quantile that
    sends `teacher_share` of all post-switch turns to F (SOMA's share in the same run).
    """
    confidences = sorted(v for d in dialogues for v in (d.get("router_confidence") or {}).values() if v is not None)
    if not confidences:
        return {"threshold": None, "teacher_share": 0.0}
    k = round(teacher_share * len(confidences))
    threshold = confidences[k - 1] if k > 0 else -math.inf
    routed = 0
    for d in dialogues:
        conf = d.get("router_confidence") or {}
        answers, served_by, teacher_turns = {}, [], []
        for turn, value in conf.items():
            to_teacher = value is not None and value <= threshold
            answers[turn] = d["answers"]["original"][turn] if to_teacher else d["answers"]["history-prefix"][turn]
            served_by.append("teacher" if to_teacher else "surrogate")
            routed += to_teacher
            if to_teacher:
                teacher_turns.append(d["original"][int(turn) - 1])
        d["answers"]["router"] = answers
        d.setdefault("adaptation", {})["router"] = {"served_by": served_by}
        g = d["tokens"]["history-prefix"]  # a cascade: G answers every turn first, F re-answers the routed ones
        d["tokens"]["router"] = {
            "teacher_prompt": sum(x["prompt_tokens"] for x in teacher_turns),
            "teacher_completion": sum(x["completion_tokens"] for x in teacher_turns),
            "surrogate_prompt": g["surrogate_prompt"],
            "surrogate_completion": g["surrogate_completion"],
        }
    return {"threshold": threshold, "teacher_share": routed / len(confidences), "target_share": teacher_share}


def _per_dialogue(dialogues: list[dict], method: str, metric: str = "cosine") -> dict[str, float]:
    out = {}
    for d in dialogues:
        scores = d.get("scores", {}).get(method)
        if scores and all(metric in s for s in scores.values()):
            out[d["id"]] = statistics.fmean(s[metric] for s in scores.values())
    return out


def _paired(dialogues: list[dict], better: str, worse: str) -> list[float]:
    """Per-dialogue differences of mean cosine, better − worse, over the dialogues both have."""
    a, b = _per_dialogue(dialogues, better), _per_dialogue(dialogues, worse)
    return [a[k] - b[k] for k in a if k in b]


def summarise(dialogues: list[dict], methods: Sequence[str], seed: int) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    references = {"soma": _per_dialogue(dialogues, "soma"), "soma@served": _per_dialogue(dialogues, "soma@served")}
    for method in [*methods, *[f"{m}@served" for m in methods if m.startswith("soma")]]:
        per = _per_dialogue(dialogues, method)
        if not per:
            continue
        mean, low, high = bootstrap_mean(list(per.values()), seed)
        row: dict[str, Any] = {
            "dialogues": len(per),
            "turns": sum(len(d.get("scores", {}).get(method, {})) for d in dialogues),
            "cosine": mean,
            "cosine_ci": [low, high],
            "rouge_l": statistics.fmean(_per_dialogue(dialogues, method, "rouge_l").values()),
        }
        bert = _per_dialogue(dialogues, method, "bertscore_f1")
        row["bertscore_f1"] = statistics.fmean(bert.values()) if bert else None
        # what a live session serves (router, @served rows) is compared with soma@served; the rest with
        # the adapted surrogate answering every post-switch turn
        reference = "soma@served" if (method == "router" or method.endswith("@served")) else "soma"
        soma = references[reference]
        if soma and method != reference:
            common = [k for k in per if k in soma]
            diff = bootstrap_mean([soma[k] - per[k] for k in common], seed)
            row["soma_minus"] = {
                "mean": diff[0],
                "ci": [diff[1], diff[2]],
                "dialogues": len(common),
                "reference": reference,
            }
        base = method.split("@")[0]
        adapt = [d["adaptation"][base] for d in dialogues if base in d.get("adaptation", {})]
        if adapt and "accepted" in adapt[0]:
            switched = [a for a in adapt if a.get("switch_turn")]
            row["switch_rate"] = len(switched) / len(adapt)
            row["gate_accept_rate"] = sum(a["accepted"] for a in adapt) / len(adapt)
            row["switch_turn"] = statistics.fmean(a["switch_turn"] for a in switched) if switched else None
            row["rollback_rate"] = sum(1 for a in switched if a.get("rollback_turn")) / max(1, len(switched))
        if adapt and "served_by" in adapt[0]:
            served = [s for a in adapt for s in a["served_by"]]
            row["teacher_share"] = served.count("teacher") / max(1, len(served))
        if adapt and "seconds" in adapt[0]:
            stages = sorted({k for a in adapt for k in a["seconds"]})
            row["adaptation_seconds"] = {k: statistics.fmean(a["seconds"].get(k, 0.0) for a in adapt) for k in stages}
            row["adaptation_seconds"]["total"] = sum(row["adaptation_seconds"].values())
        key = method if any(method in d.get("tokens", {}) for d in dialogues) else base
        tokens = [d["tokens"][key] for d in dialogues if key in d.get("tokens", {})]
        if tokens:
            row["tokens_per_dialogue"] = {k: statistics.fmean(t[k] for t in tokens) for k in tokens[0]}
        rows[method] = row
    return rows


def topic_shift_summary(dialogues: list[dict]) -> dict[str, Any] | None:
    runs = [d["topic_shift"] for d in dialogues if d.get("topic_shift")]
    if not runs:
        return None
    switched = [r for r in runs if r.get("switched")]
    shifted = [r for r in runs if r["shifted_tail_locality"]]
    own = [r for r in runs if r["own_tail_locality"]]
    sw_shift = [r for r in switched if r["shifted_tail_locality"]]
    sw_own = [r for r in switched if r["own_tail_locality"]]
    return {
        "sessions": len(runs),
        "switched_sessions": len(switched),
        "switched_detection_rate": sum(r["shifted_tail_rolled_back"] for r in sw_shift) / len(sw_shift)
        if sw_shift
        else None,
        "switched_false_rollback_rate": sum(r["own_tail_rolled_back"] for r in sw_own) / len(sw_own)
        if sw_own
        else None,
        "detection_rate": sum(r["shifted_tail_rolled_back"] for r in shifted) / max(1, len(shifted)),
        "false_rollback_rate": sum(r["own_tail_rolled_back"] for r in own) / max(1, len(own)),
        "own_tail_turns": sum(len(r["own_tail_locality"]) for r in own),
        "shifted_tail_turns": sum(len(r["shifted_tail_locality"]) for r in shifted),
        "own_locality_mean": statistics.fmean(v for r in own for v in r["own_tail_locality"]) if own else None,
        "shifted_locality_mean": statistics.fmean(v for r in shifted for v in r["shifted_tail_locality"])
        if shifted
        else None,
    }


def gate_counterfactuals(dialogues: list[dict], cfg: Any) -> dict[str, Any]:
    """What each bound (hoeffding, bernstein, none) would have decided on the same acceptance batches.

    A *false switch* is an accepted session whose adapted surrogate (S̃_t context) is, on its
    post-switch turns, no closer to Original than the untuned surrogate with the full history.
    """
    from soma.algo import gate_stats

    out: dict[str, Any] = {}
    for method in ("soma", "soma-no-antidegen", "soma-no-expweight"):
        rows = []
        for d in dialogues:
            a = d.get("adaptation", {}).get(method)
            if not a or not a.get("gaps_new"):
                continue
            worse = None
            s, h = d.get("scores", {}).get(method), d.get("scores", {}).get("history-prefix")
            if s and h:
                worse = statistics.fmean(v["cosine"] for v in s.values()) <= statistics.fmean(
                    v["cosine"] for v in h.values()
                )
            rows.append((a["gaps_old"], a["gaps_new"], worse))
        if not rows:
            continue
        per_bound = {}
        for bound in ("hoeffding", "bernstein", "none"):
            accepted = [
                (
                    worse,
                    gate_stats.accept(
                        old,
                        new,
                        epsilon=cfg.gate.epsilon,
                        delta=cfg.gate.delta,
                        bound=bound,
                        max_mean_gap=cfg.gate.max_mean_gap,
                    ).accepted,
                )
                for old, new, worse in rows
            ]
            acc = [w for w, ok in accepted if ok]
            per_bound[bound] = {
                "accept_rate": len(acc) / len(accepted),
                "false_switch_rate": (sum(1 for w in acc if w) / len(acc)) if acc else 0.0,
                "sessions": len(accepted),
            }
        out[method] = per_bound
    return out


def summarise_by_dataset(dialogues: list[dict], methods: Sequence[str], seed: int) -> dict[str, dict[str, Any]]:
    """summarise() per d['dataset'] (dataset → summary rows); {} for results that name no dataset."""
    groups: dict[str, list[dict]] = {}
    for d in dialogues:
        if d.get("dataset"):
            groups.setdefault(d["dataset"], []).append(d)
    return {name: summarise(group, methods, seed) for name, group in sorted(groups.items())}


def summarise_novel(dialogues: list[dict], methods: Sequence[str], seed: int) -> dict[str, Any]:
    """summarise() on the novel post-switch turns only (d['novel_turns'], set by stats.degeneracy); {} without them.

    On turns where Original repeats an earlier answer a surrogate can score by copying; these are the rest.
    """
    if not any("novel_turns" in d for d in dialogues):
        return {}
    restricted = []
    for d in dialogues:
        novel = set(d.get("novel_turns", ()))
        scores = {m: {t: v for t, v in sc.items() if t in novel} for m, sc in d.get("scores", {}).items()}
        restricted.append(d | {"scores": scores})
    return summarise(restricted, methods, seed)


def power(dialogues: list[dict], summary: dict[str, Any], report_size: int = stats.REPORT_SIZE) -> list[dict]:
    """Detectable difference (stats.detectable_difference) of every soma_minus row and every BETWEEN target."""
    pairs = [(row["soma_minus"]["reference"], m) for m, row in summary.items() if row.get("soma_minus")]
    out = []
    for better, worse in [*pairs, *BETWEEN]:
        diffs = _paired(dialogues, better, worse)
        if diffs:
            out.append({"comparison": f"{better} − {worse}", **stats.detectable_difference(diffs, report_size)})
    return out


def cap_share(dialogues: list[dict]) -> dict[str, dict[str, Any]]:
    """Per method, the share of its post-switch answers cut by the answer-token cap (finish reason "length").

    Original's from d['original'], the others from d['finish']; a capped answer is truncated, which
    lowers its similarity for a reason that has nothing to do with fidelity.
    """
    reasons: dict[str, list[str]] = {}
    for d in dialogues:
        for t in d.get("post_turns", ()):
            reason = d["original"][t - 1].get("finish_reason")
            if reason is not None:
                reasons.setdefault("original", []).append(reason)
        for method, by_turn in d.get("finish", {}).items():
            if method != "original":
                reasons.setdefault(method, []).extend(by_turn.values())
    return {m: {"share": r.count("length") / len(r), "answers": len(r)} for m, r in reasons.items() if r}


def _cut(text: str | None, width: int) -> str | None:
    if text is None or len(text) <= width:
        return text
    return text[: width - 1] + "…"


def examples(dialogues: list[dict], width: int = 160) -> list[dict[str, Any]]:
    """One post-switch turn of the best, median and worst dialogue by soma's mean cosine, answers cut to `width`.

    The turn is the dialogue's first novel turn (d['novel_turns']) if it has one, else its first scored turn.
    """
    per = _per_dialogue(dialogues, "soma")
    ranked = sorted(per, key=per.get, reverse=True)
    if not ranked:
        return []
    by_id = {d["id"]: d for d in dialogues}
    picks: dict[str, str] = {}
    for label, key in (("best", ranked[0]), ("median", ranked[len(ranked) // 2]), ("worst", ranked[-1])):
        picks[key] = f"{picks[key]}/{label}" if key in picks else label
    out = []
    for key, label in picks.items():
        d = by_id[key]
        scored = sorted(d["scores"]["soma"], key=int)
        novel = [t for t in d.get("novel_turns", ()) if t in d["scores"]["soma"]]
        turn = novel[0] if novel else scored[0]
        out.append(
            {
                "rank": label,
                "dialogue": key,
                "dataset": d.get("dataset"),
                "turn": int(turn),
                "soma_cosine": per[key],
                "answers": {m: _cut(d["answers"].get(m, {}).get(turn), width) for m in EXAMPLE_METHODS},
            }
        )
    return out


def analyses(
    dialogues: list[dict],
    summary: dict[str, Any],
    methods: Sequence[str],
    cfg: Any,
    encode: Callable,
    seed: int,
    report_size: int = stats.REPORT_SIZE,
) -> dict[str, Any]:
    """The report sections beyond the main summary, in dependency order (degeneracy marks d['novel_turns'] first).

    Call after score_answers and calibrate_router; pass result['degeneracy'] to targets().
    """
    out: dict[str, Any] = {"degeneracy": stats.degeneracy(dialogues, encode)}
    out["novel_summary"] = summarise_novel(dialogues, methods, seed)
    out["by_dataset"] = summarise_by_dataset(dialogues, methods, seed)
    out["power"] = power(dialogues, summary, report_size)
    out["cap_share"] = cap_share(dialogues)
    out["examples"] = examples(dialogues)
    out["savings"] = savings.teacher_savings(dialogues)
    out["break_even"] = savings.break_even(dialogues)
    out["epsilon_curve"] = savings.epsilon_curve(dialogues, cfg)
    return out


def per_turn_rows(dialogues: list[dict]) -> list[dict[str, Any]]:
    rows = []
    for d in dialogues:
        for method, scores in d.get("scores", {}).items():
            for turn, s in scores.items():
                rows.append(
                    {
                        "dialogue": d["id"],
                        "turn": int(turn),
                        "method": method,
                        **s,
                        "answer": d["answers"][method][turn],
                    }
                )
    return rows


def targets(
    summary: dict[str, Any],
    shift: dict[str, Any] | None,
    dialogues: list[dict] | None = None,
    seed: int = 0,
    degeneracy: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The issue's goals, each with the measured value and whether it was met.

    With `degeneracy` (stats.degeneracy's result) above the limit on any dataset nothing is judged
    ('met' None): a teacher that copies itself makes copying look like fidelity.
    """
    out = []
    dialogues = dialogues or []

    def ci_above(method: str) -> tuple[bool | None, str]:
        row = summary.get(method, {}).get("soma_minus")
        if not row:
            return None, "not run"
        return row["ci"][0] > 0, f"{row['mean']:+.4f} [{row['ci'][0]:+.4f}, {row['ci'][1]:+.4f}]"

    def between(better: str, worse: str) -> None:
        target = f"{better} − {worse}: 95% CI above 0"
        diffs = _paired(dialogues, better, worse)
        if not diffs:
            out.append({"target": target, "measured": "not run", "met": None})
            return
        mean, low, high = bootstrap_mean(diffs, seed)
        out.append({"target": target, "measured": f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]", "met": low > 0})

    for other in ("history-ft", "history-prefix", "surrogate", "soma-ref"):
        met, text = ci_above(other)
        out.append({"target": f"soma − {other}: 95% CI above 0", "measured": text, "met": met})
    for better, worse in BETWEEN:
        between(better, worse)
    if "soma" in summary and "surrogate" in summary:
        s, g = summary["soma"]["cosine"], summary["surrogate"]["cosine"]
        closure = (s - g) / (1 - g) if g < 1 else math.nan
        out.append(
            {
                "target": "gap closure (soma − surrogate)/(1 − surrogate) ≥ 50%",
                "measured": f"{closure:.1%}",
                "met": closure >= 0.5,
            }
        )
    if shift:
        out.append(
            {
                "target": "topic-shift detection ≥ 95%",
                "measured": f"{shift['detection_rate']:.1%}",
                "met": shift["detection_rate"] >= 0.95,
            }
        )
        out.append(
            {
                "target": "false rollback ≤ 3%",
                "measured": f"{shift['false_rollback_rate']:.1%}",
                "met": shift["false_rollback_rate"] <= 0.03,
            }
        )
    if "soma" in summary and summary["soma"].get("adaptation_seconds"):
        secs = summary["soma"]["adaptation_seconds"]
        warm = sorted({d["warm_turns"] for d in dialogues if "soma" in d.get("adaptation", {})})
        out.append(
            {
                "target": f"mining (incl. teacher queries under V(P)) + LoRA + gate ≤ 60 s per session (W = "
                f"{', '.join(map(str, warm)) or '?'})",
                "measured": f"{secs['total']:.1f} s (mining {secs.get('mining', 0):.1f}, teacher "
                f"{secs.get('teacher', 0):.1f}, LoRA {secs.get('training', 0):.1f}, gate "
                f"{secs.get('gate', 0):.1f})",
                "met": secs["total"] <= 60,
            }
        )
    return stats.withhold_verdicts(out, degeneracy)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _cell(text: str | None) -> str:
    """Text safe inside a markdown table cell: no pipes, no line breaks."""
    if text is None:
        return "–"
    return text.replace("|", "\\|").replace("\r\n", "\n").replace("\n", " ↵ ")


def _diff_text(row: dict[str, Any]) -> str:
    diff = row.get("soma_minus")
    return f"{diff['mean']:+.4f} [{diff['ci'][0]:+.4f}, {diff['ci'][1]:+.4f}]" if diff else "–"


def _score_table(rows: dict[str, Any]) -> list[str]:
    """The similarity columns of a summary (per dataset, novel turns)."""
    lines = [
        "| method | dialogues | turns | cosine (95% CI) | ROUGE-L | BERTScore F1 | soma − method (95% CI) |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, row in rows.items():
        lines.append(
            f"| {method} | {row['dialogues']} | {row['turns']} | {_fmt(row['cosine'])} [{_fmt(row['cosine_ci'][0])}, "
            f"{_fmt(row['cosine_ci'][1])}] | {_fmt(row['rouge_l'])} | {_fmt(row.get('bertscore_f1'))} "
            f"| {_diff_text(row)} |"
        )
    return lines


def _extra_sections(report: dict[str, Any]) -> list[str]:
    """Degeneracy, novel turns, per dataset, power, examples (each only when its report key is there)."""
    lines = stats.degeneracy_markdown(report.get("degeneracy"))
    if report.get("novel_summary"):
        lines += [
            "",
            "## Novel turns only",
            "",
            "Post-switch turns whose Original answer is no near-copy of an earlier one (see Teacher degeneracy).",
            "",
        ]
        lines += _score_table(report["novel_summary"])
    by_dataset = report.get("by_dataset") or {}
    if len(by_dataset) > 1:  # with one dataset the main table is its table
        for name, rows in by_dataset.items():
            lines += ["", f"## Dataset {name}", "", *_score_table(rows)]
    lines += stats.power_markdown(report.get("power"))
    if report.get("examples"):
        lines += [
            "",
            "## Example answers (best, median and worst dialogue by soma's cosine)",
            "",
            "| dialogue | turn | soma cosine | " + " | ".join(EXAMPLE_METHODS) + " |",
            "|---" * (3 + len(EXAMPLE_METHODS)) + "|",
        ]
        for e in report["examples"]:
            cells = " | ".join(_cell(e["answers"].get(m)) for m in EXAMPLE_METHODS)
            lines.append(f"| {e['rank']}: {_cell(e['dialogue'])} | {e['turn']} | {e['soma_cosine']:.4f} | {cells} |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    s = report["summary"]
    caps = report.get("cap_share") or {}
    lines = [
        "# soma bench fidelity",
        "",
        f"pair `{report['pair']}` (F = {report['teacher']}, G = {report['surrogate']}), "
        f"{report['dialogues']} dialogues from {', '.join(report['datasets'])}, min turns {report['min_turns']}, "
        f"W = {report['config']['warm_turns']}, answers of ≤ {report['answer_tokens']} tokens, seed {report['seed']}, "
        f"budget `{report['budget']}`; {report.get('dialogue_seconds', report['wall_seconds']) / 60:.1f} min of "
        f"compute for the dialogues ({report['wall_seconds'] / 60:.1f} min in this invocation).",
        "",
        "Similarity = MiniLM cosine of each post-switch answer to Original's at the same turn (paper C.3 protocol). "
        "`soma` rows are the adapted surrogate on every post-switch turn; `soma@served` is what a live session "
        "serves (G after the gate accepts, until the drift monitor rolls back; F otherwise). CIs: 95% paired "
        "bootstrap over dialogues.",
        "",
        "BERTScore F1 matches each token state of an answer to its most similar token state of Original's "
        "answer (MiniLM, no idf) and the other way round, so it rewards matching the content token by token. It "
        "is reported because a generic template shares its topic with the reference, which inflates the "
        "mean-pooled cosine, while its tokens match few of the reference's. At cap = share of answers cut by the "
        "answer-token limit (finish reason `length`).",
        "",
        "| method | cosine (95% CI) | ROUGE-L | BERTScore F1 | at cap | soma − method (95% CI) | switch rate | F share "
        "| adaptation s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, row in s.items():
        diff_text = _diff_text(row)
        cap = caps.get(method, {}).get("share")
        secs = row.get("adaptation_seconds")
        sec_text = " + ".join(f"{k} {v:.1f}" for k, v in secs.items() if k != "total") if secs else "–"
        if secs:
            sec_text += f" = {secs['total']:.1f}"
        lines.append(
            f"| {method} | {_fmt(row['cosine'])} [{_fmt(row['cosine_ci'][0])}, {_fmt(row['cosine_ci'][1])}] "
            f"| {_fmt(row['rouge_l'])} | {_fmt(row.get('bertscore_f1'))} | {_fmt(cap, 2)} | {diff_text} "
            f"| {_fmt(row.get('switch_rate'), 2)} "
            f"| {_fmt(row.get('teacher_share'), 2)} | {sec_text} |"
        )
    lines += ["", "## Targets", *stats.withheld_markdown(report.get("degeneracy"))]
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for t in stats.withhold_verdicts(report["targets"], report.get("degeneracy")):
        met = {True: "yes", False: "**no**", None: "–"}[t["met"]]
        lines.append(f"| {t['target']} | {t['measured']} | {met} |")
    lines += _extra_sections(report)
    if report.get("topic_shift"):
        ts = report["topic_shift"]
        lines += [
            "",
            "## Topic shift",
            "",
            f"{ts['sessions']} sessions; detection {ts['detection_rate']:.1%} over {ts['shifted_tail_turns']} spliced "
            f"turns (mean locality {_fmt(ts['shifted_locality_mean'], 3)}), false rollback "
            f"{ts['false_rollback_rate']:.1%} over {ts['own_tail_turns']} own-tail turns (mean locality "
            f"{_fmt(ts['own_locality_mean'], 3)}). Among the {ts['switched_sessions']} sessions that switched: "
            f"detection {_fmt(ts['switched_detection_rate'], 3)}, false rollback "
            f"{_fmt(ts['switched_false_rollback_rate'], 3)}. The drift monitor checks locality on every turn "
            "(m_cons consecutive failures roll back); the spliced tail is another dialogue's last turns.",
        ]
    lines += [
        "",
        "## Tokens per dialogue (post-switch turns; soma's teacher tokens include adaptation)",
        "",
        "| method | F prompt | F completion | G prompt | G completion |",
        "|---|---|---|---|---|",
    ]
    for method, row in s.items():
        t = row.get("tokens_per_dialogue")
        if t:
            lines.append(
                f"| {method} | {t['teacher_prompt']:.0f} | {t['teacher_completion']:.0f} "
                f"| {t['surrogate_prompt']:.0f} | {t['surrogate_completion']:.0f} |"
            )
    if report.get("router"):
        r = report["router"]
        lines += [
            "",
            f"Router calibrated to F share {_fmt(r.get('target_share'), 3)} (got "
            f"{_fmt(r.get('teacher_share'), 3)}, threshold {_fmt(r.get('threshold'), 3)}).",
        ]
    lines += savings.savings_markdown(report)
    if report.get("gate_bounds"):
        lines += [
            "",
            "## Gate bounds on the same acceptance batches",
            "",
            f"ε = {report['config']['gate']['epsilon']}, δ = {report['config']['gate']['delta']}, "
            f"|B| = {report['config']['gate']['acceptance_size']}. False switch = accepted, yet the adapted G is "
            "no closer to Original after the switch than the untuned G with the full history.",
            "",
            "| method | bound | accept rate | false switch rate |",
            "|---|---|---|---|",
        ]
        for method, bounds in report["gate_bounds"].items():
            for bound, v in bounds.items():
                lines.append(f"| {method} | {bound} | {v['accept_rate']:.2f} | {v['false_switch_rate']:.2f} |")
    if report.get("stopped_early"):
        lines += [
            "",
            f"**Stopped early**: {report['dialogues']} of {report['requested_dialogues']} requested "
            "dialogues finished (rerun with the same arguments to continue).",
        ]
    outside = report.get("outside_paper_ranges") or []
    lines += ["", "## Settings outside the paper's ranges (Appendix C.2)", ""]
    lines += [f"- {item}" for item in outside] or ["- none"]
    return "\n".join(lines) + "\n"


def plots(report: dict[str, Any], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    s = report["summary"]
    methods = [m for m in s if m != "original"]
    fig, ax = plt.subplots(figsize=(9, 4))
    means = [s[m]["cosine"] for m in methods]
    err = [
        [s[m]["cosine"] - s[m]["cosine_ci"][0] for m in methods],
        [s[m]["cosine_ci"][1] - s[m]["cosine"] for m in methods],
    ]
    ax.bar(
        methods, means, yerr=err, capsize=3, color=["#c44e52" if m.startswith("soma") else "#4c72b0" for m in methods]
    )
    ax.set_ylabel("cosine to Original (post-switch)")
    ax.set_ylim(max(0.0, min(means) - 0.1), 1.0)
    ax.tick_params(axis="x", rotation=35)
    fig.tight_layout()
    fig.savefig(out_dir / "similarity.png", dpi=110)
    plt.close(fig)
    written.append("similarity.png")

    by_offset: dict[str, dict[int, list[float]]] = {}
    for row in report["per_turn"]:
        offset = row["turn"]
        by_offset.setdefault(row["method"], {}).setdefault(offset, []).append(row["cosine"])
    fig, ax = plt.subplots(figsize=(7, 4))
    for method, turns in sorted(by_offset.items()):
        if method == "original":
            continue
        xs = sorted(turns)
        ax.plot(xs, [statistics.fmean(turns[x]) for x in xs], marker="o", label=method)
    ax.set_xlabel("turn")
    ax.set_ylabel("mean cosine to Original")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "similarity_by_turn.png", dpi=110)
    plt.close(fig)
    written.append("similarity_by_turn.png")

    adapted = [m for m in methods if s[m].get("adaptation_seconds")]
    if adapted:
        fig, ax = plt.subplots(figsize=(7, 4))
        bottom = [0.0] * len(adapted)
        for stage in ("mining", "teacher", "training", "gate"):
            values = [s[m]["adaptation_seconds"].get(stage, 0.0) for m in adapted]
            ax.bar(adapted, values, bottom=bottom, label=stage)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.set_ylabel("seconds per session")
        ax.legend()
        ax.tick_params(axis="x", rotation=30)
        fig.tight_layout()
        fig.savefig(out_dir / "adaptation_seconds.png", dpi=110)
        plt.close(fig)
        written.append("adaptation_seconds.png")
    curve = savings.savings_plot(report, out_dir)
    if curve:
        written.append(curve)
    return written
