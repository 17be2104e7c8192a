"""Benchmark dialogues from JSON Lines files in the documented schema (../shared/data/README.md).

{"id": …, "source": …, "task": …, "turns": [{"user": "…", "reference": "…" | null}, …]}
Only the user turns are used: the teacher writes the answers.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path


class DatasetError(ValueError):
    """A dataset file that is missing or not in the schema; the message names file and line."""


@dataclass(frozen=True)
class Dialogue:
    id: str
    source: str
    task: str
    queries: tuple[str, ...]
    dataset: str = ""  # the file's name without .jsonl, e.g. persuasionforgood.dev


def read_dialogues(path: Path) -> list[Dialogue]:
    if not path.is_file():
        raise DatasetError(f"dataset {path} does not exist")
    out = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                turns = row["turns"]
                queries = tuple(str(t["user"]) for t in turns)
                if not queries or any(not q.strip() for q in queries):
                    raise ValueError("every turn needs a non-empty 'user' text")
                out.append(
                    Dialogue(
                        str(row.get("id", f"{path.stem}:{number}")),
                        str(row.get("source", path.name)),
                        str(row.get("task") or ""),
                        queries,
                        path.stem,
                    )
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise DatasetError(f"{path}:{number}: not a dialogue in the documented schema ({exc})") from exc
    return out


def select(
    paths: Sequence[Path],
    count: int,
    min_turns: int,
    seed: int,
    *,
    ids: Sequence[str] | None = None,
    max_turns: int | None = None,
) -> list[Dialogue]:
    """`count` dialogues with at least `min_turns` user turns, a seeded sample over all files (or exactly
    the dialogues named in `ids`, in that order), each cut to its first `max_turns` turns."""
    pool = [d for p in paths for d in read_dialogues(Path(p)) if len(d.queries) >= min_turns]
    if ids is not None:
        by_id = {d.id: d for d in pool}
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise DatasetError(
                f"{len(unknown)} listed dialogue(s) are not in {', '.join(map(str, paths))} with at least "
                f"{min_turns} turns, e.g. {unknown[0]!r}"
            )
        chosen = [by_id[i] for i in ids][:count]
    else:
        if not pool:
            raise DatasetError(f"no dialogue in {', '.join(map(str, paths))} has at least {min_turns} turns")
        random.Random(seed).shuffle(pool)
        chosen = pool[:count]
    if max_turns is not None:
        chosen = [replace(d, queries=d.queries[:max_turns]) for d in chosen]
    return chosen


def read_id_list(path: Path) -> list[str]:
    """Dialogue ids, one per line; blank lines and # comments ignored."""
    if not Path(path).is_file():
        raise DatasetError(f"id list {path} does not exist")
    lines = (line.split("#", 1)[0].strip() for line in Path(path).read_text().splitlines())
    ids = [line for line in lines if line]
    if not ids:
        raise DatasetError(f"id list {path} names no dialogue")
    return ids
