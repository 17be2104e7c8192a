"""Why soma and random-ft score alike: which warm turns each trained on, and what that did to the gap.

Under the `cpu` budget (W = 4, `gate.split = random`, no mined pairs) soma trains on the two warm turns
its random acceptance draw leaves, weighted by hardness; random-ft trains on as many turns drawn
uniformly (`random.Random(seed + 7)`, as `DialogueRun` draws them) with no weighting. So the two differ
in which turns train and in the weights. This prints, per dialogue, both training sets and
soma − random-ft (mean MiniLM cosine to Original over the post-switch turns), then the mean difference
grouped by how many turns the two share and by which of them trained on the latest warm turn.

A diagnostic of a finished run; reading it on the report set must not choose a setting.

    python scripts/training_turns_vs_random_ft.py docs/bench/fidelity-report
"""

import json
import random
import statistics
import sys
from pathlib import Path


def main(folder: str) -> None:
    report = json.loads((Path(folder) / "report.json").read_text())
    seed = report["seed"]
    cosine: dict[tuple[str, str], list[float]] = {}
    for t in report["per_turn"]:
        cosine.setdefault((t["dialogue"], t["method"]), []).append(t["cosine"])
    groups: dict[str, list[float]] = {}
    print("dialogue                         soma trained  random-ft trained  soma - random-ft")
    for path in sorted((Path(folder) / "dialogues").glob("*.json")):
        index = int(path.name.split("-", 1)[0])
        d = json.loads(path.read_text())["result"]
        soma = d["adaptation"]["soma"]
        warm_n, size = d["warm_turns"], d["adaptation"]["random-ft"]["size"]
        if size is None:
            continue
        dialogue_seed = seed * 100_003 + index  # DialogueRun's per-dialogue seed
        random_ft = sorted(random.Random(dialogue_seed + 7).sample(range(warm_n), min(warm_n, size)))
        trained = sorted(int(k.split(":")[1]) for k in soma["training_keys"] if k.startswith("warm:"))
        diff = statistics.fmean(cosine[d["id"], "soma"]) - statistics.fmean(cosine[d["id"], "random-ft"])
        print(f"{d['id']:32s} {trained!s:13s} {random_ft!s:18s} {diff:+.3f}")
        last = warm_n - 1
        groups.setdefault(f"turns shared: {len(set(trained) & set(random_ft))}", []).append(diff)
        who = {
            (True, False): "soma only",
            (False, True): "random-ft only",
            (True, True): "both",
            (False, False): "neither",
        }
        groups.setdefault(f"latest warm turn trained by: {who[last in trained, last in random_ft]}", []).append(diff)
    print("\nsoma - random-ft, mean over dialogues, by group:")
    for name, diffs in sorted(groups.items()):
        print(f"  {name:45s} n = {len(diffs):2d}  {statistics.fmean(diffs):+.4f}")


if __name__ == "__main__":
    main(sys.argv[1])
