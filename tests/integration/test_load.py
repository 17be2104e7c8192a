"""`soma bench load` end to end at a small size (5 sessions x 3 turns, SQLite and Redis): every turn
served, the flood's excess refused with RESOURCE_EXHAUSTED at the session quota, the server alive.
Timing figures come from the full benchmark (docs/bench/load/), never from this test."""

import argparse

import pytest

from soma.bench.load import run_store

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_the_load_benchmark_serves_every_turn_and_refuses_the_flood(store, tmp_path):
    args = argparse.Namespace(sessions=5, turns=3, levels=[2])
    report = run_store(store, args, tmp_path)
    assert report["server_alive"]
    for level in report["levels"]:
        assert level["codes"] == {"OpenSession OK": level["sessions"], "Chat OK": level["sessions"] * 3}
        assert level["turns_ok"] == level["sessions"] * 3
    flood = report["flood"]["codes"]
    assert flood == {"OpenSession OK": 5, "OpenSession RESOURCE_EXHAUSTED": 20, "Chat OK": 15}
