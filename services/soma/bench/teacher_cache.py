"""F's answers on disk, so a benchmark never asks the teacher the same thing twice.

A fidelity run spends most of its time in F: Original's transcript, F under V(P) ⊕ S_t for the
mined cases, summaries. Every answer is kept in one SQLite file, keyed by the sha256 of the
model's weights, the exact messages and every decoding setting; a change in any of them is a
miss. Greedy decoding is deterministic, so a cached answer is the answer F would give again.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from soma.chat import GenerationOutcome, SamplingParams

_SCHEMA = "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, outcome TEXT NOT NULL)"


def model_sha256(folder: Path) -> str:
    """sha256 over a model folder's weight and config files (name + bytes), remembered beside the
    model in a small file keyed by the files' sizes and mtimes, so it is computed once per model."""
    folder = Path(folder)
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix in (".safetensors", ".bin", ".json", ".gguf")
    )
    stamp = json.dumps([[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files])
    memo = folder / ".soma-sha256.json"
    try:
        saved = json.loads(memo.read_text())
        if saved.get("stamp") == stamp:
            return saved["sha256"]
    except (OSError, ValueError):
        pass
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    value = digest.hexdigest()
    try:
        memo.write_text(json.dumps({"stamp": stamp, "sha256": value}))
    except OSError:
        pass  # a read-only model folder: hash again next time
    return value


def answer_key(model_sha: str, messages: Sequence[dict], params: SamplingParams) -> str:
    blob = json.dumps([model_sha, list(messages), asdict(params)], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class CachedTeacher:
    """A chat backend's generate/generate_batch through the disk cache; counts what F really did."""

    def __init__(self, backend: Any, model_sha: str, path: Path):
        self.backend = backend
        self.model_sha = model_sha
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(_SCHEMA)
        self._lock = threading.Lock()
        self.calls = 0  # conversations F generated
        self.hits = 0  # conversations answered from the cache

    def __getattr__(self, name: str) -> Any:  # tokenizer, name, ... of the wrapped backend
        return getattr(self.backend, name)

    def _get(self, key: str) -> GenerationOutcome | None:
        with self._lock:
            row = self._conn.execute("SELECT outcome FROM answers WHERE key=?", (key,)).fetchone()
        return GenerationOutcome(**json.loads(row[0])) if row else None

    def _put(self, key: str, outcome: GenerationOutcome) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO answers VALUES (?, ?)", (key, json.dumps(asdict(outcome), ensure_ascii=False))
            )

    def generate(self, messages: Sequence[dict], params: SamplingParams) -> GenerationOutcome:
        return self.generate_batch([messages], params)[0]

    def generate_batch(self, conversations: Sequence[Sequence[dict]], params: SamplingParams, **kw) -> list:
        if kw:  # logprobs and the like are not cached: ask F
            self.calls += len(conversations)
            return self.backend.generate_batch(conversations, params, **kw)
        keys = [answer_key(self.model_sha, c, params) for c in conversations]
        found = {k: self._get(k) for k in dict.fromkeys(keys)}
        missing = [k for k, v in found.items() if v is None]
        if missing:
            first = {k: conversations[keys.index(k)] for k in missing}
            asked = list(first.values())
            fresh = (
                [self.backend.generate(asked[0], params)]
                if len(asked) == 1
                else self.backend.generate_batch(asked, params)
            )
            for key, outcome in zip(missing, fresh, strict=True):
                self._put(key, outcome)
                found[key] = outcome
            self.calls += len(missing)
        self.hits += len(keys) - len(missing)
        return [found[k] for k in keys]

    def close(self) -> None:
        self._conn.close()
