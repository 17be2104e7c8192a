"""Images and the dev loop: the Dockerfiles' promises and skaffold.yaml's references."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.k8s.manifests import REPO

DOCKERFILES = {"cpu": REPO / "docker" / "Dockerfile.cpu", "cuda": REPO / "docker" / "Dockerfile.cuda"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; comments dropped, continuation lines joined."""
    text = re.sub(
        r"\\\n", " ", "\n".join(ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#"))
    )
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _all(path: Path, word: str) -> list[str]:
    return [rest for w, rest in instructions(path) if w == word]


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_image_runs_as_numeric_non_root_user(flavour):
    users = _all(DOCKERFILES[flavour], "USER")
    assert users, "no USER: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) == 10001  # numeric, so that runAsNonRoot can be verified
    assert not gid or (gid.isdigit() and int(gid) != 0)
    # nothing runs after the last USER that could need root
    words = [w for w, _ in instructions(DOCKERFILES[flavour])]
    assert "RUN" not in words[len(words) - words[::-1].index("USER") :]


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_entrypoint_is_soma_and_the_operator_is_installed(flavour):
    path = DOCKERFILES[flavour]
    assert json.loads(_all(path, "ENTRYPOINT")[-1]) == ["soma"]
    copies = _all(path, "COPY")
    assert any(c.split()[0] == "operators/soma_operator" for c in copies)
    env = " ".join(_all(path, "ENV"))
    assert "PYTHONPATH=/opt/soma/operators" in env  # `python -m soma_operator` finds the package
    assert (REPO / "operators" / "soma_operator").is_dir()


def test_cpu_image_pins_the_cpu_torch_build():
    path = DOCKERFILES["cpu"]
    assert _all(path, "FROM")[0] == "python:3.11-slim"
    runs = _all(path, "RUN")
    torch = [r for r in runs if "torch" in r]
    assert torch and "torch==2.13.0" in torch[0]
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch[0]
    # torch is installed before soma, so soma's dependency on it is already met by the CPU build
    assert runs.index(torch[0]) < next(i for i, r in enumerate(runs) if re.search(r"pip install '?\.", r))
    assert "WITH_MODELS" in " ".join(_all(path, "ARG"))


def test_cuda_image_installs_vllm_from_pypi():
    path = DOCKERFILES["cuda"]
    base_arg = next(a for a in _all(path, "ARG") if a.startswith("CUDA_IMAGE="))
    assert base_arg.split("=", 1)[1].startswith(("nvidia/cuda:", "vllm/vllm-openai:"))
    assert any(re.search(r"pip install vllm", r) for r in _all(path, "RUN"))


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_images_install_the_dependency_groups_instead_of_repeating_pins(flavour):
    import tomllib

    groups = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    text = DOCKERFILES[flavour].read_text()
    installed = re.findall(r"'\.\[([a-z,]+)\]'", text)
    assert installed and set(installed[0].split(",")) == {"serve", "jobs", "operator"}
    assert set(installed[0].split(",")) <= set(groups)
    assert "kopf==" not in text and "kubernetes==" not in text  # the operator group brings them


def test_the_client_group_brings_no_model_library():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    client = project["dependencies"] + project["optional-dependencies"]["client"]
    assert not [d for d in client if re.match(r"(torch|transformers|peft|vllm|accelerate)\b", d)]


def _dockerignore_allowlist() -> set[str]:
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()]
    assert "*" in lines, ".dockerignore should exclude everything not listed"
    return {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_every_copied_path_is_in_the_build_context(flavour):
    allowed = _dockerignore_allowlist()
    for copy in _all(DOCKERFILES[flavour], "COPY"):
        *sources, _dest = copy.split()
        for source in sources:
            assert (REPO / source).exists(), source
            assert source.rstrip("/") in allowed, f"{source} is excluded by .dockerignore"


# --- skaffold.yaml --------------------------------------------------------------------------------


def _skaffold() -> dict:
    return yaml.safe_load((REPO / "skaffold.yaml").read_text())


def _releases(section: dict) -> list[dict]:
    return section.get("deploy", {}).get("helm", {}).get("releases", [])


def test_skaffold_api_version_and_profiles():
    config = _skaffold()
    assert re.fullmatch(r"skaffold/v4beta\d+", config["apiVersion"])
    assert config["kind"] == "Config"
    assert {p["name"] for p in config["profiles"]} >= {"cpu", "gpu"}


def test_skaffold_names_only_paths_that_exist():
    config = _skaffold()
    sections = [config] + config["profiles"]
    artifacts = [a for s in sections for a in s.get("build", {}).get("artifacts", [])]
    assert artifacts
    for artifact in artifacts:
        context = REPO / artifact.get("context", ".")
        assert context.is_dir(), artifact
        assert (context / artifact["docker"]["dockerfile"]).is_file(), artifact
    releases = [r for s in sections for r in _releases(s)]
    patched = [
        p["value"] for s in config["profiles"] for p in s.get("patches", []) if p["path"].endswith("valuesFiles")
    ]
    values_files = [f for r in releases for f in r.get("valuesFiles", [])] + [f for v in patched for f in v]
    assert releases and values_files
    for release in releases:
        assert (REPO / release["chartPath"] / "Chart.yaml").is_file(), release
    for path in values_files:
        assert (REPO / path).is_file(), path


def test_skaffold_profiles_pick_the_right_dockerfile_and_values():
    config = _skaffold()
    profiles = {p["name"]: p for p in config["profiles"]}
    cpu_files = [f for p in profiles["cpu"]["patches"] for f in p["value"]]
    assert cpu_files == ["charts/soma/ci/minimal-values.yaml"]
    assert "build" not in profiles["cpu"]  # the base build: Dockerfile.cpu only
    assert [a["docker"]["dockerfile"] for a in config["build"]["artifacts"]] == ["docker/Dockerfile.cpu"]
    gpu = profiles["gpu"]
    assert "docker/Dockerfile.cuda" in [a["docker"]["dockerfile"] for a in gpu["build"]["artifacts"]]
    (release,) = _releases(gpu)
    assert release["valuesFiles"] == ["charts/soma/ci/gpu-values.yaml"]
    # each built image is wired into the chart values it is meant for
    templates = release["setValueTemplates"]
    assert templates["image.repository"] == "{{.IMAGE_REPO_soma}}"
    assert templates["gpuImage.repository"] == "{{.IMAGE_REPO_soma_cuda}}"
    assert _releases(config)[0]["setValueTemplates"]["image.tag"].startswith("{{.IMAGE_TAG_soma}}")
