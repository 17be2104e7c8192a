"""Scoring and reporting of a fidelity run: similarities, paired bootstrap CIs, targets, plots.

Primary metric: MiniLM cosine of each post-switch answer to Original's answer at the same
turn. Means and differences are taken per dialogue first and bootstrapped over dialogues
(answers within a dialogue are not independent), 2000 resamples, 95% percentile intervals.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rouge_score import rouge_scorer

RESAMPLES = 2000


def bootstrap_mean(values: Sequence[float], seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of a 95% percentile bootstrap interval of the mean."""
    if not values:
        return (math.nan, math.nan, math.nan)
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(RESAMPLES))
    return (sum(values) / n, means[int(0.025 * RESAMPLES)], means[int(0.975 * RESAMPLES) - 1])


def score_answers(dialogues: list[dict], methods: Sequence[str], encode: Callable) -> None:
    """Add dialogue['scores'][method][turn] = {'cosine', 'rouge_l'} (in place)."""
    rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    for d in dialogues:
        reference = d["answers"]["original"]
        d["scores"] = {}
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
        if scores:
            out[d["id"]] = statistics.fmean(s[metric] for s in scores.values())
    return out


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
    summary: dict[str, Any], shift: dict[str, Any] | None, dialogues: list[dict] | None = None, seed: int = 0
) -> list[dict[str, Any]]:
    """The issue's goals, each with the measured value and whether it was met."""
    out = []
    dialogues = dialogues or []

    def ci_above(method: str) -> tuple[bool | None, str]:
        row = summary.get(method, {}).get("soma_minus")
        if not row:
            return None, "not run"
        return row["ci"][0] > 0, f"{row['mean']:+.4f} [{row['ci'][0]:+.4f}, {row['ci'][1]:+.4f}]"

    def between(better: str, worse: str) -> None:
        target = f"{better} − {worse}: 95% CI above 0"
        a, b = _per_dialogue(dialogues, better), _per_dialogue(dialogues, worse)
        common = [k for k in a if k in b]
        if not common:
            out.append({"target": target, "measured": "not run", "met": None})
            return
        mean, low, high = bootstrap_mean([a[k] - b[k] for k in common], seed)
        out.append({"target": target, "measured": f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]", "met": low > 0})

    for other in ("history-ft", "history-prefix", "surrogate", "soma-ref"):
        met, text = ci_above(other)
        out.append({"target": f"soma − {other}: 95% CI above 0", "measured": text, "met": met})
    between("history-ft", "history-prefix")
    between("history-prefix", "surrogate")
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
    return out


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    s = report["summary"]
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
        "| method | cosine (95% CI) | ROUGE-L | soma − method (95% CI) | switch rate | F share | adaptation s |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, row in s.items():
        diff = row.get("soma_minus")
        diff_text = f"{diff['mean']:+.4f} [{diff['ci'][0]:+.4f}, {diff['ci'][1]:+.4f}]" if diff else "–"
        secs = row.get("adaptation_seconds")
        sec_text = " + ".join(f"{k} {v:.1f}" for k, v in secs.items() if k != "total") if secs else "–"
        if secs:
            sec_text += f" = {secs['total']:.1f}"
        lines.append(
            f"| {method} | {_fmt(row['cosine'])} [{_fmt(row['cosine_ci'][0])}, {_fmt(row['cosine_ci'][1])}] "
            f"| {_fmt(row['rouge_l'])} | {diff_text} | {_fmt(row.get('switch_rate'), 2)} "
            f"| {_fmt(row.get('teacher_share'), 2)} | {sec_text} |"
        )
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for t in report["targets"]:
        met = {True: "yes", False: "**no**", None: "–"}[t["met"]]
        lines.append(f"| {t['target']} | {t['measured']} | {met} |")
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
    return written
