"""The `client` dependency group: installed into a fresh virtual environment (from PyPI and this
checkout), it brings no model library, and its DialogueClient plays a turn against a real server."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_the_client_group_installs_without_torch_and_plays_a_turn(all_server, tmp_path):
    src = tmp_path / "src"  # a copy, so the build leaves nothing in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("services", "operators"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"{src}[client]"],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    script = f"""
        import importlib.util, json
        from soma.client import DialogueClient
        with DialogueClient({all_server.address!r}, {all_server.api_key!r}) as client:
            sid = client.open_session().session_id
            turn = client.chat(sid, "Say yes.", max_new_tokens=4)
        missing = [m for m in ("torch", "transformers", "peft") if importlib.util.find_spec(m) is None]
        print(json.dumps({{"text": turn.text, "tokens": turn.record.completion_tokens, "missing": missing}}))
    """
    played = subprocess.run(
        [python, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path
    )
    assert played.returncode == 0, played.stderr[-3000:]
    result = json.loads(played.stdout.strip().splitlines()[-1])
    assert result["missing"] == ["torch", "transformers", "peft"]  # none of them was installed
    assert result["tokens"] > 0 and result["text"]
    assert sys.executable != python
