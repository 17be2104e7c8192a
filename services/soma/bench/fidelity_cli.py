"""Arguments of `soma bench fidelity`, importable without torch so `soma --help` stays fast."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

METHODS = (
    "original",
    "surrogate",
    "history-prefix",
    "history-ft",
    "random-ft",
    "soma",
    "soma-no-antidegen",
    "soma-no-expweight",
    "soma-ref",
    "router",
)
PAIR_NAMES = ("cpu", "cpu-family")
BUDGETS = ("tiny", "cpu", "paper")
# The developers' data sits next to the repository (../shared/data); SOMA_DATA_DIR overrides.
DATA_DIR = Path(os.environ.get("SOMA_DATA_DIR", Path(__file__).resolve().parents[3].parent / "shared" / "data"))
DEFAULT_DATASET = DATA_DIR / "mtbench101.dev.jsonl"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", type=Path, nargs="+", default=[DEFAULT_DATASET], help="JSON Lines dialogue files")
    p.add_argument("--dialogues", type=int, default=40, help="how many dialogues (seeded sample)")
    p.add_argument("--min-turns", type=int, default=4, help="only dialogues with at least this many user turns")
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
    p.add_argument("--answer-tokens", type=int, default=48, help="max new tokens of every benchmark answer")
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
