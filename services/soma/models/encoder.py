"""Sentence embeddings (sentence-transformers style) for measuring how far two replies are apart.

all-MiniLM-L6-v2 is mean pooling over the token states, weighted by the attention mask, then L2
normalisation; we reproduce that with plain transformers so we need no sentence-transformers.
The "gap" between two texts is 1 - cosine similarity of their embeddings.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer


class SentenceEncoder:
    """Thread-safe mean-pooled, L2-normalised sentence encoder."""

    def __init__(self, model_path: str, *, max_length: int = 256, batch_size: int = 64):
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModel.from_pretrained(model_path)
        self.model.eval()
        self.max_length = max_length
        self.batch_size = batch_size
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def _states(self, texts: Sequence[str]) -> Iterator[tuple[torch.Tensor, Any, torch.Tensor]]:
        """(last hidden states, the tokenizer's batch with its special-token mask) per batch of texts;
        the caller holds the lock and inference mode."""
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
                return_special_tokens_mask=True,
            )
            special = batch.pop("special_tokens_mask")
            yield self.model(**batch).last_hidden_state, batch, special

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings [n, d], each row of unit length."""
        out = []
        with self._lock, torch.inference_mode():
            for states, batch, _ in self._states(texts):
                mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
                pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(F.normalize(pooled, p=2, dim=1))
        if not out:
            return torch.empty(0, self.dim)
        return torch.cat(out)

    def token_embeddings(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """Contextual token states [n_i, d] per text, each row of unit length (BERTScore's inputs).

        Special tokens ([CLS], [SEP]) and padding are dropped: they carry no content of the text,
        and [CLS]/[SEP] would match each other in any two texts. An empty text gives [0, d].
        """
        out: list[torch.Tensor] = []
        with self._lock, torch.inference_mode():
            for states, batch, special in self._states(texts):
                keep = batch["attention_mask"].bool() & ~special.bool()
                out.extend(F.normalize(states[i][keep[i]], p=2, dim=1) for i in range(states.shape[0]))
        return out

    def gaps(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """1 - cosine similarity for each (a, b) pair; identical strings are encoded once."""
        unique = list(dict.fromkeys(text for pair in pairs for text in pair))
        if not unique:
            return []
        index = {text: i for i, text in enumerate(unique)}
        emb = self.encode(unique)
        a = emb[[index[x] for x, _ in pairs]]
        b = emb[[index[y] for _, y in pairs]]
        cos = (a * b).sum(-1).clamp(-1.0, 1.0)
        return [float(g) for g in 1.0 - cos]
