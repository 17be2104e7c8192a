"""The processes that run no model start without the model libraries: the dialogue target (with live
adaptation wired to the other services) and the operator package, each in a fresh interpreter."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

HEAVY = ("torch", "transformers", "peft", "vllm")
ROOT = Path(__file__).resolve().parents[2]


def _heavy_modules_after(script: str, env: dict[str, str] | None = None) -> list[str]:
    import os

    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_dialogue_target_serves_a_session_without_torch(tmp_path):
    dead = "127.0.0.1:9"  # nothing listens: this test needs no teacher, only a started dialogue target
    env = {
        "SOMA_SERVER__PORT": "0",
        "SOMA_DIALOGUE__SESSION_DB": str(tmp_path / "s.db"),
        "SOMA_ADAPTERS__LOCAL_DIR": str(tmp_path / "adapters"),
        "SOMA_STATE_DIR": str(tmp_path / "state"),
        "SOMA_DIALOGUE__TEACHER_ADDRESS": dead,
        **{f"SOMA_ADAPTATION__{k}_ADDRESS": dead for k in ("SURROGATE", "GATE", "MINING", "TRAINING")},
    }
    script = f"""
        import json, sys
        from soma.client import DialogueClient
        from soma.config import load_settings
        from soma.serve import build_server
        settings = load_settings()
        assert settings.adaptation.mode == "embedded", settings.adaptation.mode
        server = build_server("dialogue", settings)
        server.start()
        key = settings.server.local_api_key_file.read_text().strip()  # made at first start
        with DialogueClient(server.address, key) as client:
            sid = client.open_session().session_id
            assert client.get_session(sid).session.session_id == sid
        server.stop(0)
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})))
    """
    assert _heavy_modules_after(script, env) == []


def test_operator_package_imports_without_torch():
    script = f"""
        import importlib, json, pkgutil, sys
        sys.path.insert(0, "operators")
        import soma_operator
        for info in pkgutil.walk_packages(soma_operator.__path__, "soma_operator."):
            importlib.import_module(info.name)
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})))
    """
    assert _heavy_modules_after(script) == []


def test_the_cli_imports_no_prometheus_before_the_worker_picks_its_mode():
    """`soma worker` puts prometheus_client in multiprocess mode before importing it; a CLI that
    imported it first (through the serve module's TARGETS) silently lost every job metric."""
    script = """
        import json, sys
        import soma.cli
        print(json.dumps(sorted(m for m in sys.modules if m.startswith("prometheus_client"))))
    """
    assert _heavy_modules_after(script) == []
