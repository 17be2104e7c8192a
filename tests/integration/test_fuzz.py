"""Fuzzed contracts: hypothesis-generated requests (a fixed seed, 200 per RPC) against real servers
in the cluster layout, each with the service token: `soma serve --target dialogue` in front of the
stand-in teacher `soma.bench.instant_teacher` (a real gRPC process with an instant echo backend, so
the cases fit in the suite), and one `soma serve` each for mining, training (a filesystem job queue,
no worker), gate (the real sentence encoder) and surrogate (a tiny random chat model). `soma bench
fuzz` runs the same with 2,000 per RPC."""

import pytest

from soma.bench.fuzz import RPCS, TOKEN_CHECKS, run_fuzz_stack

pytestmark = pytest.mark.integration


def test_every_rpc_survives_200_generated_requests(tmp_path):
    report, alive = run_fuzz_stack(examples=200, seed=0, folder=tmp_path)
    codes = report["codes"]
    assert alive, f"a server process died under the fuzzer: {report['servers_alive']}"
    assert report["violations"] == [], report["violations"][:10]
    for rpc in RPCS:
        assert sum(codes[rpc].values()) >= 200 or rpc == "CloseSession", (rpc, codes[rpc])
    # the generated requests reached the service and were refused with a clear status (the OK turns
    # include one plain turn per kept session, played before the generated ones)
    chat = codes["Chat"]
    assert chat.get("OK", 0) > 0 and (chat.get("NOT_FOUND", 0) + chat.get("INVALID_ARGUMENT", 0)) > 0
    # refused: UNAUTHENTICATED, or RESOURCE_EXHAUSTED for a header past gRPC's metadata size limit
    assert set(codes["Credentials"]) <= {"UNAUTHENTICATED", "RESOURCE_EXHAUSTED"}
    assert codes["Credentials"]["UNAUTHENTICATED"] > 100
    assert sum(report["kept_session_turns"].values()) > 0  # the transcript invariant was exercised
    # the internal services, fuzzed with the valid service token, and refused without it
    teacher = codes["TeacherGenerate"]
    assert teacher.get("OK", 0) > 0 and teacher.get("INVALID_ARGUMENT", 0) > 0
    for check in TOKEN_CHECKS:
        assert set(codes[check]) == {"UNAUTHENTICATED"}, (check, codes[check])
    # job submissions reached the admission check: signed ones on the stored warm turns were
    # admitted, the others refused (a training job also needs a succeeded mining job: none here)
    mining, training = codes["SubmitMiningJob"], codes["SubmitTrainingJob"]
    assert mining.get("OK", 0) > 0 and mining.get("PERMISSION_DENIED", 0) > 0 and mining.get("INVALID_ARGUMENT", 0) > 0
    assert training.get("PERMISSION_DENIED", 0) > 0 and training.get("FAILED_PRECONDITION", 0) > 0
    # no planted job: the queue holds exactly the jobs whose Submit returned OK, less those the
    # session's driver had forgotten (ForgetSessionJobs with the session's token)
    jobs = report["jobs"]
    assert jobs["jobs_submitted_ok"] and jobs["jobs_in_queue"] == jobs["jobs_expected"]
    forget = codes["ForgetSessionJobs"]
    assert forget.get("OK", 0) > 0 and forget.get("PERMISSION_DENIED", 0) > 0 and forget.get("INVALID_ARGUMENT", 0) > 0
    for rpc in ("Gap", "Accept", "ObserveTurn", "Compress", "SurrogateGenerate"):
        assert codes[rpc].get("OK", 0) > 0 and codes[rpc].get("INVALID_ARGUMENT", 0) > 0, (rpc, codes[rpc])
    assert codes["SurrogateGenerate"].get("NOT_FOUND", 0) > 0  # adapters that are not in the store
