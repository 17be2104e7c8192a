"""Fuzzed contracts: hypothesis-generated requests (a fixed seed, 200 per RPC) against a real
`soma serve --target dialogue` in front of the stand-in teacher `soma.bench.instant_teacher` (a real
gRPC process with an instant echo backend, so the cases fit in the suite), both with a service token
as in the cluster layout. `soma bench fuzz` runs the same with 2,000 per RPC."""

import pytest

from soma.bench.fuzz import RPCS, run_fuzz_stack

pytestmark = pytest.mark.integration


def test_every_public_rpc_survives_200_generated_requests(tmp_path):
    report, alive = run_fuzz_stack(examples=200, seed=0, folder=tmp_path)
    assert alive, "a server process died under the fuzzer"
    assert report["violations"] == [], report["violations"][:10]
    for rpc in RPCS:
        assert sum(report["codes"][rpc].values()) >= 200 or rpc == "CloseSession", (rpc, report["codes"][rpc])
    # the generated requests reached the service and were refused with a clear status (the OK turns
    # include one plain turn per kept session, played before the generated ones)
    chat = report["codes"]["Chat"]
    assert chat.get("OK", 0) > 0 and (chat.get("NOT_FOUND", 0) + chat.get("INVALID_ARGUMENT", 0)) > 0
    # refused: UNAUTHENTICATED, or RESOURCE_EXHAUSTED for a header past gRPC's metadata size limit
    assert set(report["codes"]["Credentials"]) <= {"UNAUTHENTICATED", "RESOURCE_EXHAUSTED"}
    assert report["codes"]["Credentials"]["UNAUTHENTICATED"] > 100
    assert sum(report["kept_session_turns"].values()) > 0  # the transcript invariant was exercised
    # the internal TeacherService, as the cluster layout runs it: fuzzed with the valid service token,
    # and refused without it
    teacher = report["codes"]["TeacherGenerate"]
    assert teacher.get("OK", 0) > 0 and teacher.get("INVALID_ARGUMENT", 0) > 0
    assert set(report["codes"]["ServiceToken"]) == {"UNAUTHENTICATED"}
