"""TransformersChatBackend on a tiny random Llama (built in code): streaming, accounting, fitting, stopping."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from soma.chat import ContextTooLong, GenerationOutcome, SamplingParams
from soma.models.chat_backend import TransformersChatBackend, _Detokenizer
from soma.models.testing import build_tiny_chat_model

MSGS = [
    {"role": "system", "content": "be helpful"},
    {"role": "user", "content": "hello world, write python code"},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny-chat"))


@pytest.fixture(scope="module")
def backend(model_dir: Path) -> TransformersChatBackend:
    return TransformersChatBackend(str(model_dir), name="tiny")


def _run(stream) -> tuple[list[str], GenerationOutcome]:
    items = list(stream)
    assert isinstance(items[-1], GenerationOutcome)
    assert all(isinstance(c, str) and c for c in items[:-1])
    return items[:-1], items[-1]


def test_stream_chunks_concatenate_to_text_and_counts(backend: TransformersChatBackend) -> None:
    chunks, out = _run(backend.stream(MSGS, SamplingParams(max_new_tokens=24)))
    assert len(chunks) > 1
    assert "".join(chunks) == out.text
    assert out.prompt_tokens == backend.count_prompt_tokens(MSGS)
    assert out.completion_tokens == 24
    assert out.finish_reason == "length"
    assert out.dropped_messages == 0
    assert out.model_latency_ms > 0


def test_greedy_is_deterministic_and_stream_matches_generate(backend: TransformersChatBackend) -> None:
    params = SamplingParams(max_new_tokens=16)
    a, b = backend.generate(MSGS, params), backend.generate(MSGS, params)
    _, streamed = _run(backend.stream(MSGS, params))
    assert a.text == b.text == streamed.text
    assert a.completion_tokens == streamed.completion_tokens == 16


def test_seeded_sampling_is_reproducible(backend: TransformersChatBackend) -> None:
    params = SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=7)
    assert backend.generate(MSGS, params).text == backend.generate(MSGS, params).text
    _, streamed = _run(backend.stream(MSGS, params))
    assert streamed.text == backend.generate(MSGS, params).text


def test_max_new_tokens_gives_length(backend: TransformersChatBackend) -> None:
    _, out = _run(backend.stream(MSGS, SamplingParams(max_new_tokens=3)))
    assert (out.finish_reason, out.completion_tokens) == ("length", 3)


def test_eos_gives_stop_and_counts_the_eos(model_dir: Path) -> None:
    b = TransformersChatBackend(str(model_dir), name="tiny")
    eos = b.eos_token_ids[0]
    head = torch.nn.Linear(b.model.config.hidden_size, b.model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[eos] = 10.0  # the model now always ends its turn at once
    b.model.lm_head = head
    _, out = _run(b.stream(MSGS, SamplingParams(max_new_tokens=10)))
    assert (out.finish_reason, out.completion_tokens, out.text) == ("stop", 1, "")
    plain = b.generate(MSGS, SamplingParams(max_new_tokens=10))
    assert (plain.finish_reason, plain.completion_tokens) == ("stop", 1)


def test_cancellation_stops_within_a_token(backend: TransformersChatBackend) -> None:
    calls = 0

    def is_cancelled() -> bool:
        nonlocal calls
        calls += 1
        return calls >= 3

    _, out = _run(backend.stream(MSGS, SamplingParams(max_new_tokens=100), is_cancelled))
    assert out.finish_reason == "cancelled"
    assert out.completion_tokens == 3


def test_closing_the_stream_early_cancels_and_releases(backend: TransformersChatBackend) -> None:
    checks = []

    def slow_not_cancelled() -> bool:  # ~10 ms per token, and counts how many tokens were generated
        checks.append(1)
        time.sleep(0.01)
        return False

    gen = backend.stream(MSGS, SamplingParams(max_new_tokens=400), slow_not_cancelled)
    assert isinstance(next(gen), str)
    gen.close()
    # closing stopped the generation long before max_new_tokens, not after running to the end
    assert len(checks) < 100
    assert not backend._lock.locked()
    # close() returned only after the generation stopped: the worker thread is idle at once
    assert backend._worker.submit(lambda: "idle").result(timeout=1) == "idle"
    _, out = _run(backend.stream(MSGS, SamplingParams(max_new_tokens=2)))
    assert out.completion_tokens == 2


def test_worker_exception_reaches_the_caller(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = TransformersChatBackend(str(model_dir), name="tiny")

    def boom(*args, **kwargs):
        raise RuntimeError("boom in generate")

    monkeypatch.setattr(b.model, "generate", boom)
    with pytest.raises(RuntimeError, match="boom in generate"):
        list(b.stream(MSGS, SamplingParams(max_new_tokens=4)))
    assert not b._lock.locked()


def _history(pairs: int) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": "be helpful"}]
    for i in range(pairs):
        msgs.append({"role": "user", "content": f"question {i} about python code and data " * 3})
        msgs.append({"role": "assistant", "content": f"answer {i} with a list and a dict " * 3})
    msgs.append({"role": "user", "content": "the last question"})
    return msgs


def test_context_fitting_drops_oldest_pairs(model_dir: Path, backend: TransformersChatBackend) -> None:
    msgs = _history(3)
    kept = [msgs[0], *msgs[-3:]]  # system + last pair + last user message
    need = backend.count_prompt_tokens(kept)
    b = TransformersChatBackend(str(model_dir), name="tiny", max_context_tokens=need + 8)
    _, out = _run(b.stream(msgs, SamplingParams(max_new_tokens=8)))
    assert out.dropped_messages == 4
    assert out.prompt_tokens == need
    assert b.generate(msgs, SamplingParams(max_new_tokens=8)).dropped_messages == 4


def test_context_too_long_when_last_message_cannot_fit(model_dir: Path) -> None:
    b = TransformersChatBackend(str(model_dir), name="tiny", max_context_tokens=40)
    msgs = _history(2)
    msgs[-1]["content"] = "python " * 100
    with pytest.raises(ContextTooLong, match=r"needs \d+ prompt tokens .* limit is 40"):
        b.stream(msgs, SamplingParams(max_new_tokens=8))
    with pytest.raises(ContextTooLong):
        b.generate(msgs, SamplingParams(max_new_tokens=8))


def test_default_context_limit_comes_from_config(backend: TransformersChatBackend) -> None:
    assert backend.max_context_tokens == 512  # min(max_position_embeddings, 8192)


def test_detokenizer_holds_back_incomplete_utf8(backend: TransformersChatBackend) -> None:
    text = "café 東京 数据 🙂 → naïve"
    ids = backend.tokenizer.encode(text, add_special_tokens=False)
    detok = _Detokenizer(backend.tokenizer)
    pieces = [detok.add([i]) for i in ids] + [detok.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text


def test_a_vanishing_temperature_from_the_wire_is_greedy(backend: TransformersChatBackend) -> None:
    """`soma bench fuzz` sent temperature=1e-45: logits / T overflowed and the surrogate answered
    INTERNAL. The wire reads any temperature below MIN_TEMPERATURE as greedy."""
    from soma.config import SurrogateSettings
    from soma.v1 import common_pb2
    from soma.wire import MIN_TEMPERATURE, sampling_from_proto

    settings = SurrogateSettings()
    for tiny in (1.401298464324817e-45, 9.99994610111476e-41, MIN_TEMPERATURE / 2):
        params = sampling_from_proto(common_pb2.GenerationParams(max_new_tokens=6, temperature=tiny), settings)
        assert params.temperature == 0.0
        messages = [{"role": "user", "content": "hello"}]
        assert backend.generate(messages, params).text == backend.generate(messages, SamplingParams(6)).text
    kept = sampling_from_proto(common_pb2.GenerationParams(temperature=0.5), settings)
    assert kept.temperature == 0.5
