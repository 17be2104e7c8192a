"""How the gate's time in a fidelity run follows F's answer length: per dialogue, the longest of F's
answers on the acceptance batch (F's tokens) against the gate's seconds, and their correlation.

    python scripts/gate_time_vs_answer_length.py docs/bench/fidelity-report-partial/dialogues
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
        rows.append((longest, soma["seconds"]["gate"], path.name))
    for longest, seconds, name in sorted(rows):
        print(f"{longest:4d} F tokens  gate {seconds:5.1f} s  {name}")
    lengths, seconds = [r[0] for r in rows], [r[1] for r in rows]
    print(f"{len(rows)} dialogues, correlation {statistics.correlation(lengths, seconds):.2f}")


if __name__ == "__main__":
    main(sys.argv[1])
