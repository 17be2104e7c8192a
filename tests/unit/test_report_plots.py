"""The bench live and bench serve reports come with a PNG, drawn from their report.json: here from
the kept reports in docs/bench (real runs)."""

import json
from pathlib import Path

import pytest

from soma.bench.report_plots import plot_live, plot_serve

DOCS = Path(__file__).resolve().parents[2] / "docs" / "bench"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", ["live-default-report.json", "live-demo-gate-report.json"])
def test_a_live_report_plots_its_turns(tmp_path, name):
    report = json.loads((DOCS / name).read_text())
    path = plot_live(report, tmp_path / "latency.png")
    assert path.read_bytes().startswith(PNG) and path.stat().st_size > 10_000


def test_a_serve_report_plots_overhead_and_throughput(tmp_path):
    report = json.loads((DOCS / "serve-report.json").read_text())
    path = plot_serve(report, tmp_path / "serve.png")
    assert path.read_bytes().startswith(PNG) and path.stat().st_size > 10_000
