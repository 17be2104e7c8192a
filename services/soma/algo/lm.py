"""Small helpers over a Hugging Face causal LM (plain or PEFT-wrapped) shared by mining and training.

Only the answer positions need logits, and the surrogate's vocabulary is large (49k for
SmolLM2), so both stages run the decoder over the whole sequence and apply the LM head to the
answer positions alone: the same numbers as a full forward, at a fraction of the memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def split_lm(model: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(decoder, lm_head) of a causal LM, looking through a PEFT wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def input_embeddings(model: Any) -> torch.Tensor:
    """E: the input-embedding matrix [V, d] (a view, never trained here)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_input_embeddings().weight


def logits_at(
    model: Any, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """Logits [N, V] at (rows[i], cols[i]) of a right-padded batch."""
    decoder, head = split_lm(model)
    hidden = decoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state
    return head(hidden[rows, cols])


def chat_ids(tokenizer: Any, messages: Sequence[dict[str, str]], *, generation_prompt: bool = True) -> list[int]:
    """Token ids of the chat template applied to messages (transformers 4 and 5 return types)."""
    out = tokenizer.apply_chat_template(list(messages), add_generation_prompt=generation_prompt, tokenize=True)
    if not isinstance(out, list):
        out = out["input_ids"]
    if out and isinstance(out[0], list):
        out = out[0]
    return [int(i) for i in out]


def text_ids(tokenizer: Any, text: str) -> list[int]:
    return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]


def special_ids(tokenizer: Any) -> list[int]:
    """Ids of every special / added control token: never part of a verbalization."""
    ids = set(int(i) for i in tokenizer.all_special_ids)
    for token_id, token in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(token, "special", False):
            ids.add(int(token_id))
    return sorted(ids)
