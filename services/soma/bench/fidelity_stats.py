"""Whether a fidelity run can tell a win at all: teacher degeneracy and statistical power.

A teacher that repeats its own earlier answers makes copying them a cheap way to look faithful,
so while it does (on more than DEGENERACY_LIMIT of its answers, on any dataset) no target is
judged. Power says how small a difference the run could have seen: a CI that straddles 0 only
means "no effect" when the detectable difference is small.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

DEGENERACY_LIMIT = 0.10
NEAR_COPY = 0.95  # cosine to an earlier answer at or above which an answer counts as a near-copy
POWER_Z = 2.8  # z_0.975 + z_0.80 = 1.96 + 0.84: 80% power, two-sided α = 0.05
REPORT_SIZE = 40


def near_copies(answers: Sequence[str], encode: Callable, threshold: float = NEAR_COPY) -> list[bool]:
    """For each answer, whether it has cosine ≥ threshold to an earlier answer in the list (never the first)."""
    if len(answers) < 2:
        return [False] * len(answers)
    emb = encode(list(answers))
    sim = (emb @ emb.T).tolist()
    return [any(sim[i][j] >= threshold for j in range(i)) for i in range(len(answers))]


def degeneracy(dialogues: list[dict], encode: Callable, threshold: float = NEAR_COPY) -> dict[str, Any]:
    """Share of Original's answers (turns 2..T) that near-copy an earlier Original answer of the same dialogue.

    Overall and per d['dataset'] ("?" when a result has none). Also sets d['novel_turns'] (in place)
    to the post-switch turns (strings) whose Original answer is no near-copy: the turns where
    matching Original takes more than repeating what the dialogue already said.
    """
    counts: dict[str, list[int]] = {}
    novel_total = post_total = 0
    for d in dialogues:
        copies = near_copies([o["answer"] for o in d["original"]], encode, threshold)
        c = counts.setdefault(d.get("dataset") or "?", [0, 0])
        c[0] += sum(copies)
        c[1] += max(0, len(copies) - 1)
        d["novel_turns"] = [str(t) for t in d["post_turns"] if not copies[t - 1]]
        novel_total += len(d["novel_turns"])
        post_total += len(d["post_turns"])

    def share(copies: int, answers: int) -> dict[str, Any]:
        return {"share": copies / answers if answers else 0.0, "near_copies": copies, "answers": answers}

    return {
        "threshold": threshold,
        "limit": DEGENERACY_LIMIT,
        "overall": share(sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())),
        "per_dataset": {name: share(*c) for name, c in sorted(counts.items())},
        "novel_post_turns": novel_total,
        "post_turns": post_total,
    }


def degenerate_datasets(info: dict[str, Any] | None, limit: float = DEGENERACY_LIMIT) -> dict[str, float]:
    """The datasets (name → share) on which the teacher repeats itself on more than `limit` of its answers."""
    if not info:
        return {}
    return {name: v["share"] for name, v in info["per_dataset"].items() if v["share"] > limit}


def withhold_verdicts(
    targets: list[dict[str, Any]], info: dict[str, Any] | None, limit: float = DEGENERACY_LIMIT
) -> list[dict[str, Any]]:
    """Targets with 'met' = None and a note in 'measured' while the teacher is degenerate on any dataset.

    Idempotent, so markdown() can apply it again to targets that already went through it.
    """
    bad = degenerate_datasets(info, limit)
    if not bad:
        return targets
    name, worst = max(bad.items(), key=lambda kv: kv[1])
    note = f"not judged: teacher degeneracy {worst:.0%} > {limit:.0%} ({name})"
    return [t if note in t["measured"] else t | {"met": None, "measured": f"{t['measured']}; {note}"} for t in targets]


def detectable_difference(differences: Sequence[float], report_size: int = REPORT_SIZE) -> dict[str, Any]:
    """Smallest paired mean difference detectable at 80% power, two-sided α = 0.05: 2.8 × SD / √n.

    SD of the per-dialogue differences (n − 1); None when n < 2. 'mde_at_report_size' projects the
    same SD to `report_size` dialogues: how small an effect a run of that size could resolve.
    """
    n = len(differences)
    sd = statistics.stdev(differences) if n >= 2 else None
    return {
        "dialogues": n,
        "sd": sd,
        "mde": POWER_Z * sd / math.sqrt(n) if sd is not None else None,
        "report_size": report_size,
        "mde_at_report_size": POWER_Z * sd / math.sqrt(report_size) if sd is not None else None,
    }


def degeneracy_markdown(info: dict[str, Any] | None) -> list[str]:
    """The 'Teacher degeneracy' section."""
    if not info:
        return []
    lines = [
        "",
        "## Teacher degeneracy",
        "",
        f"Share of Original's answers (turns 2..T) that are near-copies (MiniLM cosine ≥ {info['threshold']}) of an "
        f"earlier Original answer in the same dialogue: {info['overall']['share']:.1%} of "
        f"{info['overall']['answers']}. {info['novel_post_turns']} of {info['post_turns']} post-switch turns are "
        "novel (no near-copy); the novel-turn table below scores only those.",
        "",
        "| dataset | answers | near-copies | share |",
        "|---|---|---|---|",
    ]
    for name, v in info["per_dataset"].items():
        flag = " **> limit**" if v["share"] > info["limit"] else ""
        lines.append(f"| {name} | {v['answers']} | {v['near_copies']} | {v['share']:.1%}{flag} |")
    return lines


def withheld_markdown(info: dict[str, Any] | None, limit: float = DEGENERACY_LIMIT) -> list[str]:
    """Why no target is judged (empty when they are)."""
    bad = degenerate_datasets(info, limit)
    if not bad:
        return []
    names = ", ".join(f"{k} {v:.0%}" for k, v in bad.items())
    return [
        "",
        f"**No target is judged**: the teacher repeats an earlier answer of its own on more than {limit:.0%} of "
        f"its answers ({names}). Where Original copies itself, a surrogate that copies the same template matches "
        "it without following the dialogue, so a win there would not show fidelity. Fix the teacher's decoding "
        "(or the dataset) first; the measured values are shown for information.",
    ]


def power_markdown(rows: list[dict[str, Any]] | None) -> list[str]:
    """The 'Power' section: one line per comparison."""
    if not rows:
        return []
    lines = [
        "",
        "## Power",
        "",
        "Smallest difference in mean cosine detectable at 80% power, two-sided α = 0.05: 2.8 × SD(per-dialogue "
        "paired differences) / √n; a CI that straddles 0 says little when this is larger than the effect sought.",
        "",
    ]
    for r in rows:
        if r["mde"] is None:
            lines.append(f"- {r['comparison']}: n = {r['dialogues']}, too few dialogues for an SD")
            continue
        lines.append(
            f"- {r['comparison']}: n = {r['dialogues']}, SD {r['sd']:.4f} → detectable {r['mde']:.4f} "
            f"({r['mde_at_report_size']:.4f} with {r['report_size']} dialogues)"
        )
    return lines
