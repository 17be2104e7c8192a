"""The adapter store, local folder and S3 (a real moto S3 server process), with real PEFT adapters."""

from __future__ import annotations

import json

import pytest
import torch

from soma.algo import config
from soma.algo.lora_train import SessionAdapters, TrainingPair, train
from soma.errors import DataLoss, InvalidArgument, NotFound, Unavailable
from soma.models.chat_backend import TransformersChatBackend
from soma.models.testing import build_tiny_chat_model
from soma.storage import adapter_store as store_mod
from soma.storage.adapter_store import LocalAdapterStore, S3AdapterStore, build_manifest
from tests.servers import s3_server

ACCESS, SECRET = "testing-key", "testing-secret"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny surrogate with one trained adapter, exported as bytes."""
    path = build_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "chat")
    backend = TransformersChatBackend(str(path), name="tiny")
    cfg = config.preset("tiny").lora.model_copy(update={"steps": 3, "lr": 5e-2})
    adapters = SessionAdapters(backend.model, cfg)
    msgs = ({"role": "user", "content": "hello world"},)
    train(adapters, "s", backend.tokenizer, [TrainingPair(msgs, "python code"), TrainingPair(msgs, "the code")], cfg)
    weights, cfg_bytes = adapters.export("s")
    return backend, adapters, weights, cfg_bytes


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("s3")) as (endpoint, proc):
        yield (
            S3AdapterStore.connect(
                endpoint, "adapters", ACCESS, SECRET, secure=False, region="us-east-1", create_bucket=True
            ),
            proc,
        )


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalAdapterStore(tmp_path / "adapters")
    return request.getfixturevalue("s3")[0]


def _manifest(session, gen, weights, cfg_bytes):
    return build_manifest(session, gen, weights, cfg_bytes, base_model="tiny", rank=4, metrics={"loss": 0.5})


def test_roundtrip_restores_the_same_adapter(store, trained):
    backend, adapters, weights, cfg_bytes = trained
    uri = store.put(_manifest("sess-1", 1, weights, cfg_bytes), weights, cfg_bytes)
    assert "sess-1/1" in uri
    got = store.get("sess-1", 1)
    assert got.weights == weights and got.manifest.metrics == {"loss": 0.5} and got.manifest.rank == 4
    assert got.manifest.files["adapter_model.safetensors"]["sha256"] == store_mod._sha256(weights)
    adapters.load("copy", got.weights, got.config)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        with adapters.using("s") as m:
            original = m(input_ids=ids).logits
        with adapters.using("copy") as m:
            loaded = m(input_ids=ids).logits
        with adapters.using(None) as m:
            base = m(input_ids=ids).logits
    assert torch.allclose(original, loaded) and not torch.allclose(original, base)
    adapters.delete("copy")


def test_delete_session_removes_every_generation(store, trained):
    _, _, weights, cfg_bytes = trained
    for gen in (1, 2, 3):
        store.put(_manifest("sess-del", gen, weights, cfg_bytes), weights, cfg_bytes)
    store.put(_manifest("sess-other", 1, weights, cfg_bytes), weights, cfg_bytes)
    assert store.generations("sess-del") == [1, 2, 3]
    assert store.delete_session("sess-del") == 3
    assert store.generations("sess-del") == []
    with pytest.raises(NotFound):
        store.get("sess-del", 2)
    assert store.generations("sess-other") == [1]  # neighbours untouched


def test_session_ids_with_path_characters_never_reach_a_key(store, trained):
    _, _, weights, cfg_bytes = trained
    for bad in ("../escape", "a/b", "..", "", "x" * 200, "a\\b"):
        with pytest.raises(InvalidArgument, match="session id"):
            store.get(bad, 1)
        with pytest.raises(InvalidArgument):
            store.delete_session(bad)
        with pytest.raises(InvalidArgument):
            build_manifest(bad, 1, weights, cfg_bytes, base_model="tiny", rank=4)
    with pytest.raises(InvalidArgument, match="generation"):
        store.get("ok", 0)


def test_only_safetensors_and_matching_checksums_load(tmp_path, trained):
    _, _, weights, cfg_bytes = trained
    import pickle

    with pytest.raises(DataLoss, match="not a safetensors"):
        build_manifest("s", 1, pickle.dumps({"w": [1, 2]}), cfg_bytes, base_model="tiny", rank=4)
    local = LocalAdapterStore(tmp_path)
    local.put(_manifest("s", 1, weights, cfg_bytes), weights, cfg_bytes)
    target = tmp_path / "s" / "1" / "adapter_model.safetensors"
    tampered = bytearray(target.read_bytes())
    tampered[-1] ^= 0xFF
    target.write_bytes(bytes(tampered))
    with pytest.raises(DataLoss, match="sha256"):
        local.get("s", 1)


def test_s3_checksum_mismatch_is_detected(s3, trained):
    store, _ = s3
    _, _, weights, cfg_bytes = trained
    store.put(_manifest("sess-bad", 1, weights, cfg_bytes), weights, cfg_bytes)
    manifest = json.loads(store._read("sess-bad/1/manifest.json"))
    manifest["files"]["adapter_model.safetensors"]["sha256"] = "0" * 64
    store._put("sess-bad/1/manifest.json", json.dumps(manifest).encode(), "application/json")
    with pytest.raises(DataLoss, match="sha256"):
        store.get("sess-bad", 1)


def test_unreachable_s3_is_unavailable_with_a_clear_message(tmp_path):
    from tests.servers import free_port

    store = S3AdapterStore.connect(
        f"127.0.0.1:{free_port()}", "adapters", ACCESS, SECRET, secure=False, region="us-east-1"
    )
    with pytest.raises(Unavailable, match="unreachable"):
        store.get("sess", 1)


def test_adapter_cache_is_lru_bounded_by_count_and_bytes(tmp_path, trained):
    from soma.surrogate.adapter_cache import AdapterCache

    _, adapters, weights, cfg_bytes = trained
    local = LocalAdapterStore(tmp_path)
    for session in ("a", "b", "c"):
        local.put(_manifest(session, 1, weights, cfg_bytes), weights, cfg_bytes)
    size = len(weights) + len(cfg_bytes)
    cache = AdapterCache(adapters, local, max_count=2, max_bytes=10 * size)
    first = cache.acquire("a", 1)
    assert cache.acquire("a", 1) == first and (cache.stats.hits, cache.stats.misses) == (1, 1)
    cache.acquire("b", 1)
    cache.acquire("a", 1)  # a is now the most recent
    cache.acquire("c", 1)  # over the count bound: b (least recent) goes
    assert ("a", 1) in cache and ("c", 1) in cache and ("b", 1) not in cache
    assert cache.name("b", 1) not in adapters.names  # removed from the model, not only the index
    by_bytes = AdapterCache(adapters, local, max_count=10, max_bytes=size + 1)
    by_bytes.acquire("a", 1)
    by_bytes.acquire("b", 1)
    assert ("a", 1) not in by_bytes and ("b", 1) in by_bytes and by_bytes.stats.evictions == 1
    with pytest.raises(NotFound):
        cache.acquire("missing", 1)
    cache.drop_session("a")
    assert ("a", 1) not in cache and cache.name("a", 1) not in adapters.names


def test_a_pinned_adapter_is_never_evicted_or_dropped_under_a_running_turn(tmp_path, trained):
    """Issue 15: a turn pins its adapter while it streams; the cache goes over its bound rather than
    pull it out, and settles when the turn releases it."""
    from soma.surrogate.adapter_cache import AdapterCache

    _, adapters, weights, cfg_bytes = trained
    local = LocalAdapterStore(tmp_path)
    for session in ("a", "b", "c"):
        local.put(_manifest(session, 1, weights, cfg_bytes), weights, cfg_bytes)
    cache = AdapterCache(adapters, local, max_count=1, max_bytes=10**9)
    with cache.pinned("a", 1) as a:
        name_b, hit = cache.pin("b", 1)  # over max_count 1, but a is in use: a stays
        assert not hit and ("a", 1) in cache and ("b", 1) in cache and a in adapters.names
        assert cache.pins(a) == cache.pins(name_b) == 1 and cache.stats.evictions == 0
        cache.acquire("c", 1)  # an unpinned load evicts only what nobody uses: itself stays, the others are pinned
        assert ("a", 1) in cache and ("b", 1) in cache
        cache.drop_session("a")  # a rollback while a's turn streams: a goes when the turn ends
        assert a in adapters.names and ("a", 1) in cache
        cache.release(name_b)
        assert ("b", 1) not in cache and name_b not in adapters.names  # settled: back under the bound
    assert ("a", 1) not in cache and a not in adapters.names and cache.pins(a) == 0
    with cache.pinned("a", 1) as again:  # a dropped adapter loads afresh on its next turn
        assert again == a and a in adapters.names


def test_session_ids_with_dots_get_peft_safe_names_and_base_model_is_checked(tmp_path, trained):
    from soma.errors import FailedPrecondition
    from soma.surrogate.adapter_cache import AdapterCache

    _, adapters, weights, cfg_bytes = trained
    local = LocalAdapterStore(tmp_path)
    local.put(_manifest("user.42.chat", 1, weights, cfg_bytes), weights, cfg_bytes)
    cache = AdapterCache(adapters, local, max_count=4, max_bytes=10**9, base_model="tiny")
    name = cache.acquire("user.42.chat", 1)
    assert "." not in name and name in adapters.names
    other = AdapterCache(adapters, local, max_count=4, max_bytes=10**9, base_model="another-model")
    with pytest.raises(FailedPrecondition, match="trained on 'tiny'"):
        other.acquire("user.42.chat", 1)


def test_a_generation_is_written_once(store, trained):
    _, _, weights, cfg_bytes = trained
    first = _manifest("sess-once", 1, weights, cfg_bytes)
    store.put(first, weights, cfg_bytes)
    import dataclasses

    second = dataclasses.replace(first, metrics={"loss": 9.9})
    store.put(second, weights, cfg_bytes)  # a redelivered job: the stored generation stays
    assert store.get("sess-once", 1).manifest.metrics == {"loss": 0.5}


def test_stored_adapter_configs_are_reduced_to_plain_lora():
    from soma.algo.lora_train import safe_lora_config

    cfg = safe_lora_config(
        {
            "peft_type": "LORA",
            "r": 4,
            "lora_alpha": 8,
            "target_modules": ["q_proj"],
            "init_lora_weights": "pissa",
            "modules_to_save": ["lm_head"],
            "bias": "none",
        }
    )
    assert cfg.r == 4 and cfg.init_lora_weights is True and cfg.modules_to_save is None
    with pytest.raises(ValueError, match="not LoRA"):
        safe_lora_config({"peft_type": "PREFIX_TUNING"})
    with pytest.raises(ValueError, match="rank"):
        safe_lora_config({"peft_type": "LORA", "r": 100000})
    with pytest.raises(ValueError, match="bias"):
        safe_lora_config({"peft_type": "LORA", "r": 4, "bias": "all"})


def test_missing_bucket_is_a_configuration_error(s3, tmp_path):
    from soma.storage.adapter_store import StoreMisconfigured

    store, _ = s3
    ghost = S3AdapterStore(store.client, "no-such-bucket")
    with pytest.raises(StoreMisconfigured, match="NoSuchBucket"):
        ghost.get("sess", 1)


def test_a_relative_local_folder_still_gives_file_uris(tmp_path, trained, monkeypatch):
    _, _, weights, cfg_bytes = trained
    monkeypatch.chdir(tmp_path)
    store = LocalAdapterStore("relative/adapters")  # made absolute when the store is built
    uri = store.put(_manifest("sess-rel", 1, weights, cfg_bytes), weights, cfg_bytes)
    assert uri == (tmp_path / "relative" / "adapters" / "sess-rel" / "1").as_uri() == store.uri("sess-rel", 1)
    monkeypatch.chdir("/")
    assert store.get("sess-rel", 1).manifest.generation == 1


def test_delete_generation_removes_only_that_generation(store, trained):
    _, _, weights, cfg_bytes = trained
    for gen in (1, 2):
        store.put(_manifest("sess-del", gen, weights, cfg_bytes), weights, cfg_bytes)
    store.delete_generation("sess-del", 2)
    assert store.generations("sess-del") == [1]
    with pytest.raises(NotFound):
        store.get("sess-del", 2)
    store.delete_generation("sess-del", 2)  # again: nothing to do, no error


def test_an_s3_put_that_fails_midway_leaves_no_files(s3, trained, monkeypatch):
    store = s3[0]
    _, _, weights, cfg_bytes = trained
    real_put = store._put

    def put(name, data, content_type):
        if name.endswith("manifest.json"):
            raise Unavailable("the store went away")
        real_put(name, data, content_type)

    monkeypatch.setattr(store, "_put", put)
    with pytest.raises(Unavailable):
        store.put(_manifest("sess-half", 1, weights, cfg_bytes), weights, cfg_bytes)
    assert list(store.client.list_objects(store.bucket, prefix="sess-half/", recursive=True)) == []
