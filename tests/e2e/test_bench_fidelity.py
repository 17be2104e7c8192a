"""`soma bench fidelity` end to end: the real `cpu` pair (Qwen2.5-Coder-0.5B → SmolLM2-135M, MiniLM),
two short dialogues, the `tiny` budget, every method, topic-shift mode, run as a real process: first
without two methods, then with all of them, which must reuse the finished work and ask F nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from soma.bench.fidelity_cli import METHODS

pytestmark = pytest.mark.integration

DIALOGUES = [
    {
        "id": "apples",
        "source": "test",
        "task": "memory",
        "turns": [
            {"user": "I have a red apple and a green apple. I eat the red one.", "reference": None},
            {"user": "Which apple do I still have?", "reference": None},
            {"user": "What colour is it?", "reference": None},
        ],
    },
    {
        "id": "python",
        "source": "test",
        "task": "code",
        "turns": [
            {"user": "Write a Python function that adds two numbers.", "reference": None},
            {"user": "Now make it add three numbers.", "reference": None},
            {"user": "Add a docstring to it.", "reference": None},
        ],
    },
]


LATER = ("compressed-prefix", "soma-full")  # methods that need no new F answer, added by the second run


def _run(dataset: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "soma",
        "bench",
        "fidelity",
        "--dataset",
        str(dataset),
        "--dialogues",
        "2",
        "--min-turns",
        "3",
        "--budget",
        "tiny",
        "--answer-tokens",
        "6",
        "--topic-shift",
        "--seed",
        "1",
        "--no-progress",
        "--out",
        str(out),
        "--teacher-cache",
        str(out.parent / "teacher-answers.sqlite"),
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity")
    dataset = root / "dialogues.jsonl"
    dataset.write_text("".join(json.dumps(d) + "\n" for d in DIALOGUES))
    out = root / "out"
    first = _run(dataset, out, "--methods", ",".join(m for m in METHODS if m not in LATER))
    assert first.returncode == 0, first.stderr[-4000:]
    made_first = json.loads((out / "report.json").read_text())["teacher_calls"]["made"]
    proc = _run(dataset, out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return dataset, out, proc, made_first


def test_adding_methods_reuses_finished_work_and_asks_f_nothing(bench):
    _, out, _, made_first = bench
    report = json.loads((out / "report.json").read_text())
    assert made_first > 0  # the first run generated Original and the mined answers
    assert report["teacher_calls"]["made"] == 0 and report["teacher_calls"]["cached"] > 0
    for d in report["per_dialogue"]:
        assert d["adaptation"]["soma"]["teacher_calls"] >= 1  # soma itself was kept from the first run
    for method in LATER:
        assert report["summary"][method]["dialogues"] == 2


def test_report_schema_and_every_method_answered(bench):
    _, out, proc, _ = bench
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "soma.bench.fidelity/2"
    assert report["dialogues"] == 2 and report["pair"] == "cpu"
    assert set(report["methods"]) == set(METHODS)
    for method in METHODS:
        row = report["summary"][method]
        assert row["dialogues"] == 2, method
        assert -1.0 <= row["cosine_ci"][0] <= row["cosine"] <= row["cosine_ci"][1] <= 1.0 + 1e-6, method
        if method != "soma":
            assert set(row["soma_minus"]) == {"mean", "ci", "dialogues", "reference"}
    assert report["summary"]["original"]["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert report["summary"]["router"]["soma_minus"]["reference"] == "soma@served"  # same share of F turns
    for variant in ("soma", "soma-no-antidegen", "soma-no-expweight", "soma-ref"):
        served = report["summary"][f"{variant}@served"]
        assert served["dialogues"] == 2 and 0.0 <= served["teacher_share"] <= 1.0
    router = report["router"]
    assert router["teacher_share"] == pytest.approx(router["target_share"])  # two turns: any share is exact
    per_turn = report["per_turn"]
    for dialogue in ("apples", "python"):
        for method in METHODS:
            rows = [r for r in per_turn if r["dialogue"] == dialogue and r["method"] == method]
            assert [r["turn"] for r in rows] == [3], (dialogue, method)  # W = 2, one post-switch turn
            assert isinstance(rows[0]["answer"], str) and 0.0 <= rows[0]["rouge_l"] <= 1.0
    answered = {r["method"] for r in per_turn if r["answer"].strip()}
    assert answered >= set(METHODS) - {"router"}
    for d in report["per_dialogue"]:
        soma = d["adaptation"]["soma"]
        assert not set(soma["training_keys"]) & set(soma["acceptance_keys"])
        assert set(soma["seconds"]) == {"mining", "teacher", "training", "gate"}
        assert soma["teacher_calls"] >= 1  # F saw V(P) ⊕ S_t
        assert d["adaptation"]["soma-ref"]["teacher_calls"] == 0
        assert soma["transitions"][0].startswith("WARMUP->ADAPTING")
        assert d["tokens"]["original"]["teacher_completion"] > 0
    assert report["topic_shift"]["sessions"] == 2
    assert [t["target"] for t in report["targets"]][0].startswith("soma − history-ft")
    md = (out / "report.md").read_text()
    assert "| soma |" in md and "## Targets" in md and "## Topic shift" in md
    for plot in report["plots"]:
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(report["plots"]) == 4 and "savings.png" in report["plots"]


def test_rerun_reuses_finished_dialogues(bench):
    dataset, out, _, _ = bench
    t0 = time.perf_counter()
    proc = _run(dataset, out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert report["reused_dialogues"] == 2 and report["teacher_calls"]["made"] == 0
    assert report["summary"]["soma"]["dialogues"] == 2
    assert time.perf_counter() - t0 < report["wall_seconds"] + 120  # sanity: nothing was recomputed twice


def test_a_soma_only_setting_reruns_soma_and_keeps_the_baselines(bench):
    """Changing a gate or mining setting must not redo the baselines (most of a report's hours), and
    must redo SOMA: its old result would belong to other settings."""
    dataset, out, _, _ = bench
    before = json.loads((out / "report.json").read_text())
    proc = _run(dataset, out, "--set", "gate.epsilon=0.2", "--set", "mining.mined_pairs=0")
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert report["reused_dialogues"] == 0 and report["fingerprint"] != before["fingerprint"]
    assert report["config"]["gate"]["epsilon"] == 0.2
    old = {d["id"]: d for d in before["per_dialogue"]}
    for d in report["per_dialogue"]:
        for method in ("surrogate", "history-prefix", "compressed-prefix", "history-ft", "random-ft"):
            assert d["seconds"][method] == old[d["id"]]["seconds"][method]  # kept, not recomputed
        assert d["seconds"]["soma"] != old[d["id"]]["seconds"]["soma"]  # rerun under the new settings
        assert d["adaptation"]["soma"]["teacher_calls"] == 0  # no mined pairs: F was not asked
    assert report["summary"]["soma"]["dialogues"] == 2


def test_bad_arguments_exit_2_with_a_message(tmp_path):
    missing = _run(tmp_path / "nope.jsonl", tmp_path / "o")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "turns": [{"reference": "no user"}]}\n')
    schema = _run(bad, tmp_path / "o")
    assert schema.returncode == 2 and "bad.jsonl:1" in schema.stderr
    unknown = _run(bad, tmp_path / "o", "--methods", "soma,magic")
    assert unknown.returncode == 2 and "unknown method(s) magic" in unknown.stderr
    short = _run(bad, tmp_path / "o", "--max-turns", "2")  # W = 2 in the tiny budget
    assert short.returncode == 2 and "--max-turns 2" in short.stderr and "W + 1 = 3" in short.stderr
