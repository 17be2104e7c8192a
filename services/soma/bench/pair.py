"""The model pair a fidelity benchmark runs: F and G as chat backends, G's adapters and N_k, φ.

`cpu` is the embedded pair (Qwen2.5-Coder-0.5B → SmolLM2-135M, different tokenizers as in the
paper's LLaMA setting); `cpu-family` is the slower same-family pair (Qwen 1.5B → Qwen 0.5B).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from soma.algo import lm, neighbourhood
from soma.algo.adaptation import Surrogate
from soma.algo.config import MethodConfig
from soma.algo.lora_train import SessionAdapters
from soma.algo.teacher_client import Completion, Message
from soma.chat import SamplingParams
from soma.models.catalog import default_cache_dir, resolve_model
from soma.models.chat_backend import TransformersChatBackend
from soma.models.encoder import SentenceEncoder

PAIRS = {
    "cpu": ("qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct"),
    "cpu-family": ("qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct"),
}
ENCODER = "all-minilm-l6-v2"


class BackendTeacher:
    """TeacherClient over a local chat backend: batched answers with the benchmark's teacher decoding
    (`params`; its max_new_tokens is each call's)."""

    def __init__(self, backend: Any, batch_size: int = 4, params: SamplingParams | None = None):
        self.backend = backend
        self.batch_size = batch_size
        self.params = params or SamplingParams()

    def complete(self, conversations: Sequence[Sequence[Message]], max_new_tokens: int) -> list[Completion]:
        out: list[Completion] = []
        params = replace(self.params, max_new_tokens=max_new_tokens)
        for start in range(0, len(conversations), self.batch_size):
            chunk = conversations[start : start + self.batch_size]
            for o in self.backend.generate_batch(chunk, params):
                out.append(Completion(o.text, o.prompt_tokens, o.completion_tokens, o.finish_reason))
        return out


@dataclass
class LoadedPair:
    name: str
    teacher: Any  # TransformersChatBackend, or a CachedTeacher over it
    surrogate: Surrogate
    encoder: SentenceEncoder
    teacher_model: str
    surrogate_model: str


def load_pair(
    name: str, cfg: MethodConfig, cache_dir: Path | None = None, log=print, teacher_cache: Path | None = None
) -> LoadedPair:
    """The pair's models; with `teacher_cache` (a SQLite file) every F answer goes through that cache."""
    if name not in PAIRS:
        raise ValueError(f"unknown pair {name!r}; choose one of {', '.join(PAIRS)}")
    cache = cache_dir or default_cache_dir()
    f_name, g_name = PAIRS[name]
    f_path = resolve_model(f_name, cache, log=log)
    teacher = TransformersChatBackend(f_path, name=f_name)
    if teacher_cache is not None:
        from soma.bench.teacher_cache import CachedTeacher, model_sha256

        teacher = CachedTeacher(teacher, model_sha256(Path(f_path)), teacher_cache)
    g_backend = TransformersChatBackend(resolve_model(g_name, cache, log=log), name=g_name)
    table = neighbourhood.cached_neighbours(
        lm.input_embeddings(g_backend.model), cfg.mining.neighbours, cache / "neighbours"
    )
    adapters = SessionAdapters(g_backend.model, cfg.lora)
    encoder = SentenceEncoder(resolve_model(ENCODER, cache, log=log))
    return LoadedPair(name, teacher, Surrogate(g_backend, adapters, table), encoder, f_name, g_name)
