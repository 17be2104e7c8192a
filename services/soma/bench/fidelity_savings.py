"""What SOMA saves: teacher (F) tokens per dialogue, the turn at which adaptation has paid for
itself, and the trade-off between F tokens and fidelity as the gate's ε moves.

Everything is computed from stored results, without a model call. Saved % = 1 − mean F tokens of
the method / mean F tokens of Original over the same dialogues (F prompt + completion tokens).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EPSILONS = tuple(round(-0.2 + 0.05 * i, 2) for i in range(11))  # -0.2 .. 0.3


def original_by_turn(d: dict) -> list[int]:
    """F tokens Original spends at each turn 1..T."""
    by_turn = d.get("teacher_by_turn", {}).get("original")
    if by_turn is not None:
        return list(by_turn)
    return [o["prompt_tokens"] + o["completion_tokens"] for o in d["original"]]


def dialogue_teacher_tokens(d: dict) -> dict[str, int]:
    """F tokens over the whole dialogue for original, history-prefix, router and soma@served (those available).

    history-prefix: F answers the W warm turns, G the rest. router: F on the warm turns and on the
    post-switch turns the router sent to it (a cascade re-asks F with the full history, as Original).
    """
    orig, w = original_by_turn(d), d["warm_turns"]
    out = {"original": sum(orig), "history-prefix": sum(orig[:w])}
    router = d.get("adaptation", {}).get("router", {}).get("served_by")
    if router is not None:
        routed = [t for t, by in zip(d["post_turns"], router, strict=True) if by == "teacher"]
        out["router"] = sum(orig[:w]) + sum(orig[t - 1] for t in routed)
    served = d.get("teacher_by_turn", {}).get("soma@served")
    if served is not None:
        out["soma@served"] = sum(served)
    return out


def teacher_savings(dialogues: list[dict]) -> dict[str, Any]:
    """Per method: dialogues, mean F tokens per dialogue, saved % vs Original on the same dialogues."""
    totals = [dialogue_teacher_tokens(d) for d in dialogues]
    out = {}
    for method in ("original", "soma@served", "router", "history-prefix"):
        rows = [t for t in totals if method in t]
        if not rows:
            continue
        orig = statistics.fmean(t["original"] for t in rows)
        mean = statistics.fmean(t[method] for t in rows)
        out[method] = {"dialogues": len(rows), "teacher_tokens": mean, "saved": 1 - mean / orig if orig else 0.0}
    return out


def break_even_turn(original: Sequence[int], served: Sequence[int], warm_turns: int) -> int | None:
    """First turn t ≥ W (1-based) at which cumulative served F tokens ≤ cumulative Original F tokens."""
    cum_o = cum_s = 0
    for t, (o, s) in enumerate(zip(original, served, strict=True), start=1):
        cum_o, cum_s = cum_o + o, cum_s + s
        if t >= warm_turns and cum_s <= cum_o:
            return t
    return None


def break_even(dialogues: list[dict]) -> dict[str, Any] | None:
    """Break-even turn of soma@served per dialogue; the median over those that break even, and how many do."""
    turns = {
        d["id"]: break_even_turn(original_by_turn(d), d["teacher_by_turn"]["soma@served"], d["warm_turns"])
        for d in dialogues
        if "soma@served" in d.get("teacher_by_turn", {})
    }
    if not turns:
        return None
    even = [t for t in turns.values() if t is not None]
    return {
        "dialogues": len(turns),
        "break_even": len(even),
        "median_turn": statistics.median(even) if even else None,
        "per_dialogue": turns,
    }


def _counterfactual(d: dict, accepted: bool) -> tuple[float, int]:
    """(post-switch similarity, F tokens) of generation 1 alone, accepted or not."""
    soma = d["adaptation"]["soma"]
    orig, w = original_by_turn(d), d["warm_turns"]
    if not accepted:
        return 1.0, sum(orig) + soma["adaptation_teacher_tokens"]
    ifa, cos = soma["if_accepted"], d["scores"]["soma"]
    sims = [
        cos[str(t)]["cosine"] if by == "surrogate" else 1.0
        for t, by in zip(d["post_turns"], ifa["served_by"], strict=True)
    ]
    return statistics.fmean(sims), sum(orig[:w]) + soma["adaptation_teacher_tokens"] + sum(ifa["teacher_tokens"])


def _curve_ready(d: dict) -> bool:
    soma = d.get("adaptation", {}).get("soma", {})
    keys = ("gaps_old", "gaps_new", "if_accepted", "locality_ok", "adaptation_teacher_tokens")
    return all(k in soma for k in keys) and bool(soma["gaps_new"]) and "soma" in d.get("scores", {})


def epsilon_curve(dialogues: list[dict], cfg: Any, epsilons: Sequence[float] = EPSILONS) -> dict[str, Any] | None:
    """F tokens saved vs post-switch similarity of generation 1 as the gate's ε moves (no re-adaptation).

    Per dialogue the stored acceptance-batch gaps are re-judged with gate_stats.accept (cfg.gate's δ,
    bound, max_mean_gap) and the stored locality verdict; an accepted session serves what
    if_accepted recorded (soma's cosine on G's turns, 1.0 on F's), a rejected one serves F on every
    turn. Also the as-served point (soma@served, re-adaptations included) on the same dialogues.
    """
    from soma.algo import gate_stats

    ready = [d for d in dialogues if _curve_ready(d)]
    if not ready:
        return None
    g = cfg.gate
    points = []
    for eps in epsilons:
        sims, tokens, accepted = [], [], 0
        for d in ready:
            soma = d["adaptation"]["soma"]
            gate = gate_stats.accept(
                soma["gaps_old"],
                soma["gaps_new"],
                epsilon=eps,
                delta=g.delta,
                bound=g.bound,
                max_mean_gap=g.max_mean_gap,
            )
            ok = gate.accepted and bool(soma["locality_ok"])
            sim, spent = _counterfactual(d, ok)
            sims.append(sim)
            tokens.append(spent)
            accepted += ok
        orig = statistics.fmean(sum(original_by_turn(d)) for d in ready)
        points.append(
            {
                "epsilon": eps,
                "accept_rate": accepted / len(ready),
                "saved": 1 - statistics.fmean(tokens) / orig if orig else 0.0,
                "similarity": statistics.fmean(sims),
            }
        )
    return {"dialogues": len(ready), "points": points, "as_served": _as_served(ready)}


def _as_served(dialogues: list[dict]) -> dict[str, Any] | None:
    rows = [
        d for d in dialogues if "soma@served" in d.get("teacher_by_turn", {}) and d.get("scores", {}).get("soma@served")
    ]
    if not rows:
        return None
    orig = statistics.fmean(sum(original_by_turn(d)) for d in rows)
    spent = statistics.fmean(sum(d["teacher_by_turn"]["soma@served"]) for d in rows)
    sims = [statistics.fmean(s["cosine"] for s in d["scores"]["soma@served"].values()) for d in rows]
    return {"dialogues": len(rows), "saved": 1 - spent / orig if orig else 0.0, "similarity": statistics.fmean(sims)}


def savings_markdown(report: dict[str, Any]) -> list[str]:
    """The 'Teacher tokens saved' section from report['savings'], ['break_even'] and ['epsilon_curve']."""
    savings, even, curve = report.get("savings"), report.get("break_even"), report.get("epsilon_curve")
    if not (savings or even or curve):
        return []
    lines = [
        "",
        "## Teacher tokens saved (whole dialogue, F prompt + completion)",
        "",
        "Saved = 1 − mean F tokens / mean F tokens of Original on the same dialogues. soma@served counts the F "
        "calls of adaptation at the turn that triggered them and the drift monitor's shadow answers; "
        "history-prefix is F on the warm turns only; router adds the post-switch turns it sent to F.",
    ]
    if savings:
        lines += ["", "| method | dialogues | F tokens per dialogue | saved |", "|---|---|---|---|"]
        for method, v in savings.items():
            lines.append(f"| {method} | {v['dialogues']} | {v['teacher_tokens']:.0f} | {v['saved']:.1%} |")
    if even:
        median = "–" if even["median_turn"] is None else f"{even['median_turn']:g}"
        lines += [
            "",
            f"Break-even (first turn t ≥ W with cumulative soma@served F tokens ≤ Original's): {even['break_even']} "
            f"of {even['dialogues']} dialogues break even, median turn {median}.",
        ]
    if curve:
        lines += [
            "",
            f"### ε sweep ({curve['dialogues']} dialogues)",
            "",
            "Generation 1's gate only (no re-adaptation), re-judged on the stored acceptance-batch gaps: an "
            "accepted session serves what the drift monitor let G serve (similarity = soma's cosine on G's turns, "
            "1 on F's), a rejected one serves F throughout (similarity 1).",
            "",
            "| ε | accept rate | F tokens saved | post-switch similarity |",
            "|---|---|---|---|",
        ]
        for p in curve["points"]:
            lines.append(f"| {p['epsilon']:+.2f} | {p['accept_rate']:.2f} | {p['saved']:.1%} | {p['similarity']:.4f} |")
        if curve.get("as_served"):
            a = curve["as_served"]
            lines += [
                "",
                f"As served (soma@served, re-adaptations included, {a['dialogues']} dialogues): saved "
                f"{a['saved']:.1%}, similarity {a['similarity']:.4f}.",
            ]
    return lines


def savings_plot(report: dict[str, Any], out_dir: Path) -> str | None:
    """savings.png: F tokens saved vs post-switch similarity, one point per ε plus the as-served point."""
    curve = report.get("epsilon_curve")
    if not curve or not curve["points"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [100 * p["saved"] for p in curve["points"]]
    ys = [p["similarity"] for p in curve["points"]]
    ax.plot(xs, ys, marker="o", color="#4c72b0", label="generation 1, ε sweep")
    for p, x, y in zip(curve["points"], xs, ys, strict=True):
        ax.annotate(f"{p['epsilon']:+.2f}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if curve.get("as_served"):
        a = curve["as_served"]
        ax.scatter([100 * a["saved"]], [a["similarity"]], color="#c44e52", marker="*", s=120, label="as served")
    ax.set_xlabel("teacher tokens saved (%)")
    ax.set_ylabel("post-switch similarity to Original")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "savings.png", dpi=110)
    plt.close(fig)
    return "savings.png"
