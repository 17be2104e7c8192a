"""Which of a fidelity run's generation-1 acceptances were false switches, and what other gate rules would
have decided on the same acceptance batches.

The report's "Gate bounds" table gives only the false-switch *rate*. This lists the dialogues, by the
report's own rule (fidelity_report.gate_counterfactuals): an accepted adapter is a false switch when
soma's mean cosine to Original over the post-switch turns is no higher than history-prefix's (untuned G,
full history). It then replays two improvement rules on generation 1's gaps with the gate's own test
(gate_stats.accept, bound none, the run's gate.max_mean_gap; no locality check, as the report's table):

- absolute: mean(gap_old - gap_new) >= eps (the shipped rule, bound none);
- relative: mean(gap_old - gap_new) / mean(gap_old) >= r (the improvement as a share of the gap).

A diagnostic only: run on the report set it must not choose a setting (that is the tuning set's job).

    .venv/bin/python scripts/gate_false_switches.py docs/bench/fidelity-report/report.json

Given a second report of the same dialogues (OTHER), it also prints the Pearson correlation of the two
runs' generation-1 improvements, dialogue by dialogue, e.g. against the whole-answer gate kept at 3d99d28:

    git show 3d99d28:docs/bench/fidelity-report/report.json > /tmp/whole-answer.json
    .venv/bin/python scripts/gate_false_switches.py docs/bench/fidelity-report/report.json /tmp/whole-answer.json
"""

import json
import statistics
import sys

from soma.algo import gate_stats


def rows(report: dict) -> list[dict]:
    cos: dict[tuple[str, str], list[float]] = {}
    for t in report["per_turn"]:
        cos.setdefault((t["dialogue"], t["method"]), []).append(t["cosine"])
    out = []
    for d in report["per_dialogue"]:
        a = d["adaptation"].get("soma")
        if not a or not a.get("gaps_new"):
            continue
        soma, hp = statistics.fmean(cos[d["id"], "soma"]), statistics.fmean(cos[d["id"], "history-prefix"])
        out.append(
            {
                "id": d["id"],
                "accepted": a["accepted"],
                "improvement": a["mean_improvement"],
                "relative": a["mean_improvement"] / statistics.fmean(a["gaps_old"]),
                "soma": soma,
                "history_prefix": hp,
                "worse": soma <= hp,
                "gaps_old": a["gaps_old"],
                "gaps_new": a["gaps_new"],
            }
        )
    return out


def replay(table: list[dict], key: str, thresholds: list[float], gate: dict) -> list[str]:
    """Accept where the improvement (key "improvement") or its share of the old gap ("relative") reaches th."""
    lines = []
    good = sum(1 for r in table if not r["worse"])
    for th in thresholds:
        acc = [
            r
            for r in table
            if gate_stats.accept(
                r["gaps_old"],
                r["gaps_new"],
                epsilon=th if key == "improvement" else th * statistics.fmean(r["gaps_old"]),
                delta=gate["delta"],
                bound="none",
                max_mean_gap=gate["max_mean_gap"],
            ).accepted
        ]
        false = sum(1 for r in acc if r["worse"])
        missed = good - (len(acc) - false)
        lines.append(f"  {key} >= {th:+.2f}: accepted {len(acc):2d}/{len(table)}, false {false}, missed good {missed}")
    return lines


def compare(table: list[dict], other: list[dict]) -> str:
    """The correlation of two runs' generation-1 improvements over the dialogues both gated."""
    theirs = {r["id"]: r["improvement"] for r in other}
    pairs = [(r["improvement"], theirs[r["id"]]) for r in table if r["id"] in theirs]
    flips = sum(1 for r in table for o in other if r["id"] == o["id"] and r["accepted"] != o["accepted"])
    if len(pairs) < 2:
        return f"\nAgainst the other report: {len(pairs)} dialogue(s) in common, no correlation"
    mine, other_impr = zip(*pairs, strict=True)
    return (
        f"\nAgainst the other report: {len(pairs)} dialogues in common, generation-1 improvements "
        f"correlate at {statistics.correlation(mine, other_impr):.2f}; decisions differ on {flips}"
    )


def main(path: str, other_path: str | None = None) -> None:
    report = json.load(open(path))
    table, gate = rows(report), report["config"]["gate"]
    print("dialogue                         gen1 impr  relative  accepted  soma   hist-prefix  false")
    for r in table:
        flag = "FALSE" if r["accepted"] and r["worse"] else ""
        print(
            f"{r['id']:32s} {r['improvement']:+.4f}   {r['relative']:+.3f}    "
            f"{str(r['accepted']):5s}     "
            f"{r['soma']:.3f}  {r['history_prefix']:.3f}        {flag}"
        )
    acc = [r for r in table if r["accepted"]]
    print(
        f"\n{len(table)} dialogues; generation 1 accepted {len(acc)}, false switches "
        f"{sum(1 for r in acc if r['worse'])}; adapters no better than history-prefix: "
        f"{sum(1 for r in table if r['worse'])}"
    )
    print("\nReplay on generation 1's gaps (diagnostic, not for choosing):")
    print("\n".join(replay(table, "improvement", [-0.05, 0.0, 0.02, 0.05, 0.08, 0.10], gate)))
    print("\n".join(replay(table, "relative", [0.0, 0.05, 0.10, 0.15, 0.20, 0.25], gate)))
    if other_path:
        print(compare(table, rows(json.load(open(other_path)))))


if __name__ == "__main__":
    main(*sys.argv[1:3])
