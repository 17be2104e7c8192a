"""Arguments of `soma bench fidelity`, importable without torch so `soma --help` stays fast."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

METHODS = (
    "original",
    "surrogate",
    "history-prefix",
    "compressed-prefix",
    "history-ft",
    "random-ft",
    "soma",
    "soma-full",
    "soma-no-antidegen",
    "soma-no-expweight",
    "soma-ref",
    "router",
)
PAIR_NAMES = ("cpu", "cpu-family")
BUDGETS = ("tiny", "cpu", "paper")
# Fixed, disjoint dialogue lists of the default datasets (docs/bench/sets/README.md says how they were drawn).
SETS_DIR = Path(__file__).resolve().parents[3] / "docs" / "bench" / "sets"
# The developers' full data sits next to the repository (../shared/data); a clone without it uses the
# dialogues of the fixed sets, bundled in the repository (python -m soma.bench.bundle_sets).
# SOMA_DATA_DIR overrides both.
SHARED_DATA_DIR = Path(__file__).resolve().parents[3].parent / "shared" / "data"
BUNDLED_DIR = SETS_DIR / "data"
DATA_DIR = Path(
    os.environ.get(
        "SOMA_DATA_DIR", SHARED_DATA_DIR if (SHARED_DATA_DIR / "multiwoz21.test.jsonl").is_file() else BUNDLED_DIR
    )
)
# Long dialogues: each gives ≥ 6 post-switch answers at W = 4 (one turn-1 answer decides nothing).
DEFAULT_DATASETS = [DATA_DIR / "persuasionforgood.dev.jsonl", DATA_DIR / "multiwoz21.test.jsonl"]
TEACHER_CACHE = Path("~/.cache/soma/teacher-answers.sqlite")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from soma.config import TEACHER_REPETITION_PENALTY

    p.add_argument("--dataset", type=Path, nargs="+", default=DEFAULT_DATASETS, help="JSON Lines dialogue files")
    p.add_argument(
        "--dialogues", type=int, default=40, help="how many dialogues (seeded sample, or the first of --ids)"
    )
    p.add_argument(
        "--ids",
        type=Path,
        help=f"only these dialogues, in this order: a file of ids, one per line (kept: {SETS_DIR}/tuning.txt, "
        "report.txt)",
    )
    p.add_argument("--min-turns", type=int, default=10, help="only dialogues with at least this many user turns")
    p.add_argument(
        "--max-turns", type=int, default=10, help="cut each dialogue to its first N turns (must leave W + 1)"
    )
    p.add_argument("--pair", choices=PAIR_NAMES, default="cpu")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--budget", choices=BUDGETS, default="cpu", help="method config preset")
    p.add_argument("--config", type=Path, help="YAML of method settings over the preset (nested, as MethodConfig)")
    p.add_argument(
        "--set",
        dest="changes",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one method setting, e.g. --set mining.steps=12 (repeatable)",
    )
    p.add_argument("--answer-tokens", type=int, default=96, help="max new tokens of every benchmark answer")
    p.add_argument(
        "--teacher-repetition-penalty",
        type=float,
        default=TEACHER_REPETITION_PENALTY,
        help="F's repetition penalty, for every F call (default: the embedded teacher's, teacher.repetition_penalty)",
    )
    p.add_argument(
        "--teacher-cache",
        type=Path,
        default=TEACHER_CACHE,
        help="SQLite file of F's answers, keyed by model sha256, prompt and decoding: F is never asked twice",
    )
    p.add_argument("--topic-shift", action="store_true", help="also splice another dialogue's tail after W")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="start no new dialogue after this many minutes; report on the finished ones",
    )
    p.add_argument("--report-only", action="store_true", help="rebuild the report from finished dialogues in --out")
    p.add_argument("--fresh", action="store_true", help="ignore finished dialogues from an earlier run in --out")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", type=Path, default=Path("bench-out/fidelity"))
