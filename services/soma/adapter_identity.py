"""Who an adapter is and what may be loaded as one, in one place: the store key of a (session,
generation), the PEFT-safe module name, the safetensors check, the plain-LoRA config check, and
the `Adapters` protocol that the PEFT and vLLM implementations provide.

Torch-free and peft-free: the implementations turn `safe_lora_fields` into a peft LoraConfig.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import AbstractContextManager
from typing import Any, Protocol

from soma.errors import DataLoss, InvalidArgument
from soma.ids import is_valid_session_id


class AdapterCorrupt(DataLoss):
    """A stored adapter whose bytes do not match its manifest, or that is not safetensors."""


def check_key(session_id: str, generation: int) -> str:
    """The key prefix {session}/{generation}; refuses ids that could escape it."""
    if not is_valid_session_id(session_id):
        raise InvalidArgument(
            f"session id {session_id!r} is not valid: use 1-128 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    if not isinstance(generation, int) or generation < 1:
        raise InvalidArgument(f"adapter generation must be an integer ≥ 1, got {generation!r}")
    return f"{session_id}/{generation}"


def adapter_name(session_id: str, generation: int) -> str:
    """A PEFT-safe module name for (session, generation): session ids may hold '.', torch names may not."""
    return "a" + hashlib.sha256(check_key(session_id, generation).encode()).hexdigest()[:24]


def check_safetensors(data: bytes) -> None:
    """Refuse anything that is not a well-formed safetensors file (header length + JSON header)."""
    if len(data) < 8:
        raise AdapterCorrupt("adapter weights are not a safetensors file (too short)")
    header_len = int.from_bytes(data[:8], "little")
    if header_len <= 0 or 8 + header_len > len(data):
        raise AdapterCorrupt("adapter weights are not a safetensors file (bad header length)")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except ValueError as exc:
        raise AdapterCorrupt("adapter weights are not a safetensors file (header is not JSON)") from exc
    if not isinstance(header, dict):
        raise AdapterCorrupt("adapter weights are not a safetensors file (header is not an object)")


_SAFE_FIELDS = ("r", "lora_alpha", "lora_dropout", "target_modules", "bias", "task_type")


def safe_lora_fields(raw: dict) -> dict[str, Any]:
    """A stored adapter's config, reduced to plain LoRA: nothing in it may touch the shared base
    weights (PiSSA/OLoRA inits rewrite them, modules_to_save replaces them) or grow without bound."""
    if raw.get("peft_type") not in ("LORA", None):
        raise ValueError(f"adapter type {raw.get('peft_type')!r} is not LoRA")
    fields = {k: raw[k] for k in _SAFE_FIELDS if k in raw and raw[k] is not None}
    rank = int(fields.get("r", 8))
    if not 1 <= rank <= 256:
        raise ValueError(f"adapter rank {rank} is outside 1..256")
    if fields.get("bias", "none") != "none":
        raise ValueError("adapter trains biases; only bias='none' adapters are accepted")
    fields["target_modules"] = sorted(fields.get("target_modules") or [])
    return fields


class Adapters(Protocol):
    """Session adapters resident on one surrogate replica (PEFT modules or vLLM LoRA requests),
    as the adapter cache and the surrogate service use them."""

    def load(self, name: str, weights: bytes, config: bytes) -> None:
        """Add the adapter `name` from safetensors weights and a checked LoRA config."""
        ...

    def delete(self, name: str) -> None: ...

    def using(self, name: str | None) -> AbstractContextManager[Any]:
        """Generate with adapter `name` (None: the base model) inside the block."""
        ...
