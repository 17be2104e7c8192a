"""Model catalogue, one-time preparation of packaged GGUF models, and the chat/encoder backends.

Heavy modules (transformers, torch) are only imported by the backends; importing this package
for the catalogue alone stays cheap.
"""

from soma.models.catalog import (
    CATALOG,
    CatalogModel,
    ModelNotPrepared,
    ModelPackageMissing,
    default_cache_dir,
    resolve_model,
)
from soma.models.prepare import ChecksumMismatch, is_prepared, prepare_model, verify_prepared

__all__ = [
    "CATALOG",
    "CatalogModel",
    "ChecksumMismatch",
    "ContextTooLong",
    "GenerationOutcome",
    "ModelNotPrepared",
    "ModelPackageMissing",
    "SamplingParams",
    "SentenceEncoder",
    "TransformersChatBackend",
    "default_cache_dir",
    "is_prepared",
    "prepare_model",
    "resolve_model",
    "verify_prepared",
]

_LAZY = {
    "ContextTooLong": "soma.models.chat_backend",
    "GenerationOutcome": "soma.models.chat_backend",
    "SamplingParams": "soma.models.chat_backend",
    "TransformersChatBackend": "soma.models.chat_backend",
    "SentenceEncoder": "soma.models.encoder",
}


def __getattr__(name: str):
    """Import the torch/transformers-backed names on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
