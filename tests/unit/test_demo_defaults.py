"""`make demo` runs the product's defaults: no gate, bound or budget of its own."""

from __future__ import annotations

from pathlib import Path

from soma.cli import build_parser
from soma.demo.runner import demo_env, gate_decisions

ROOT = Path(__file__).resolve().parents[2]


def test_demo_passes_no_method_override(tmp_path):
    env = demo_env(tmp_path)
    assert set(env) == {"SOMA_STATE_DIR"}  # no SOMA_METHOD__OVERRIDES: the shipped gate decides
    args = build_parser().parse_args(["demo"])
    assert not any("gate" in name or "epsilon" in name for name in vars(args))
    recipe = [line.strip() for line in (ROOT / "Makefile").read_text().split("\ndemo:")[1].splitlines()[1:3]]
    assert recipe[0] == "$(VENV)/bin/soma demo" and not recipe[1]  # make demo adds no flag


def test_demo_shows_the_gates_decision_and_why(tmp_path):
    log = tmp_path / "server.log"
    log.write_text(
        "2026-11-30 INFO soma.adaptation: session s-1 gen 1: gate rejected (improvement -0.0100 < eps 0.0500)\n"
        "2026-11-30 INFO soma.adaptation: session other gen 1: gate accepted (improvement 0.2 >= eps 0.05)\n"
        "2026-11-30 INFO soma.adaptation: session s-1 gen 2: gate accepted (improvement 0.0900 >= eps 0.0500)\n"
    )
    assert gate_decisions(log, "s-1") == [
        "gate rejected generation 1: improvement -0.0100 < eps 0.0500",
        "gate accepted generation 2: improvement 0.0900 >= eps 0.0500",
    ]
    assert gate_decisions(tmp_path / "missing.log", "s-1") == []
