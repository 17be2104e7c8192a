"""Copy the dialogues of the fixed benchmark sets (docs/bench/sets/tuning.txt, report.txt) from the
developers' data folder into the repository (docs/bench/sets/data/), so `soma bench fidelity`
and `soma bench recipe` run from a clone. The rows are copied byte for byte, in their files' order;
each file keeps its dataset's name, which the reports group by.

    python -m soma.bench.bundle_sets [--from ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from soma.bench.dialogues import read_id_list
from soma.bench.fidelity_cli import BUNDLED_DIR, SETS_DIR, SHARED_DATA_DIR

DATASETS = ("persuasionforgood.dev.jsonl", "multiwoz21.test.jsonl")


def bundle(source: Path, target: Path = BUNDLED_DIR) -> dict[str, int]:
    wanted = set(read_id_list(SETS_DIR / "tuning.txt")) | set(read_id_list(SETS_DIR / "report.txt"))
    target.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name in DATASETS:
        lines = [ln for ln in (source / name).read_text(encoding="utf-8").splitlines() if ln.strip()]
        kept = [ln for ln in lines if json.loads(ln)["id"] in wanted]
        (target / name).write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")
        counts[name] = len(kept)
    if (source / "licenses").is_dir():
        shutil.copytree(source / "licenses", target / "licenses", dirs_exist_ok=True)
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--from", dest="source", type=Path, default=SHARED_DATA_DIR)
    print(bundle(p.parse_args().source))


if __name__ == "__main__":
    main()
