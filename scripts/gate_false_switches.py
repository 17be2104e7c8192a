"""Which of a fidelity run's generation-1 acceptances were false switches, and what other gate rules would
have decided on the same acceptance batches.

The report's "Gate bounds" table gives only the false-switch *rate*. This lists the dialogues, by the
report's own rule (fidelity_report.gate_counterfactuals): an accepted adapter is a false switch when
soma's mean cosine to Original over the post-switch turns is no higher than history-prefix's (untuned G,
full history). It then replays two improvement rules on generation 1's gaps, keeping the gate's other
checks (mean gap <= gate.max_mean_gap, locality) as they were:

- absolute: mean(gap_old - gap_new) >= eps (the shipped rule, bound none);
- relative: mean(gap_old - gap_new) / mean(gap_old) >= r (the improvement as a share of the gap).

A diagnostic only: run on the report set it must not choose a setting (that is the tuning set's job).

    python scripts/gate_false_switches.py docs/bench/fidelity-report-partial/report.json
"""

import json
import statistics
import sys


def rows(report: dict) -> list[dict]:
    max_gap = report["config"]["gate"]["max_mean_gap"]
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
                "other_checks": (max_gap <= 0 or a["mean_gap_new"] <= max_gap) and a.get("locality_ok", True),
            }
        )
    return out


def replay(table: list[dict], key: str, thresholds: list[float]) -> list[str]:
    lines = []
    good = sum(1 for r in table if not r["worse"])
    for th in thresholds:
        acc = [r for r in table if r[key] >= th and r["other_checks"]]
        false = sum(1 for r in acc if r["worse"])
        missed = good - (len(acc) - false)
        lines.append(f"  {key} >= {th:+.2f}: accepted {len(acc):2d}/{len(table)}, false {false}, missed good {missed}")
    return lines


def main(path: str) -> None:
    table = rows(json.load(open(path)))
    print("dialogue                         gen1 impr  relative  checks  accepted  soma   hist-prefix  false")
    for r in table:
        flag = "FALSE" if r["accepted"] and r["worse"] else ""
        checks = "ok" if r["other_checks"] else "fail"
        print(
            f"{r['id']:32s} {r['improvement']:+.4f}   {r['relative']:+.3f}    {checks:4s}    "
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
    print("\n".join(replay(table, "improvement", [-0.05, 0.0, 0.02, 0.05, 0.08, 0.10])))
    print("\n".join(replay(table, "relative", [0.0, 0.05, 0.10, 0.15, 0.20, 0.25])))


if __name__ == "__main__":
    main(sys.argv[1])
