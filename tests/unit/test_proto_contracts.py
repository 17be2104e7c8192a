"""The contracts: buf lint passes and the checked-in stubs are what `make proto` generates."""

import shutil
import subprocess
import sys
from pathlib import Path

from soma.tools.proto_check import PROTO_DIR, stale_stubs


def test_stubs_are_fresh():
    assert stale_stubs() == [], "run `make proto` and commit the stubs"


def test_buf_lint_passes():
    buf = shutil.which("buf") or str(Path(sys.executable).parent / "buf")
    result = subprocess.run([buf, "lint"], cwd=PROTO_DIR, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_turn_record_carries_the_required_fields():
    from soma.v1 import common_pb2

    fields = set(common_pb2.TurnRecord.DESCRIPTOR.fields_by_name)
    assert {
        "turn_index",
        "served_by",
        "route_reason",
        "phase",
        "prompt_tokens",
        "completion_tokens",
        "latency_ms",
    } <= fields
