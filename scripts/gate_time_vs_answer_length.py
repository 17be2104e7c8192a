"""How the gate's time in a fidelity run follows F's answer length: per dialogue, the longest of F's
answers on the acceptance batch (F's tokens) against the gate's seconds, and their correlation; then
the whole adaptation's seconds (mining + F + LoRA + gate): mean, median, how many within 60 s, longest.

    python scripts/gate_time_vs_answer_length.py docs/bench/fidelity-report/dialogues
"""

import json
import statistics
import sys
from pathlib import Path


def main(folder: str) -> None:
    rows = []
    for path in sorted(Path(folder).glob("*.json")):
        result = json.loads(path.read_text())["result"]
        soma = result["adaptation"]["soma"]
        longest = max(result["original"][int(k.split(":")[1])]["completion_tokens"] for k in soma["acceptance_keys"])
        rows.append((longest, soma["seconds"]["gate"], path.name, sum(soma["seconds"].values())))
    for longest, seconds, name, _ in sorted(rows):
        print(f"{longest:4d} F tokens  gate {seconds:5.1f} s  {name}")
    lengths, seconds = [r[0] for r in rows], [r[1] for r in rows]
    print(f"{len(rows)} dialogues, correlation {statistics.correlation(lengths, seconds):.2f}")
    total = [r[3] for r in rows]
    print(
        f"adaptation: mean {statistics.fmean(total):.1f} s, median {statistics.median(total):.1f} s, "
        f"{sum(1 for t in total if t <= 60)} of {len(total)} within 60 s, longest {max(total):.1f} s"
    )


if __name__ == "__main__":
    main(sys.argv[1])
