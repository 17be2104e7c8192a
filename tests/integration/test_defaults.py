"""`soma serve --target all` as a new user starts it: no configuration at all.

Each server here runs in a scratch working directory with a scratch HOME and none of the
caller's SOMA_* or XDG_* variables, so nothing leaks in from the developer's machine. Two
things are set, and only these: the `tiny` method budget through its one documented setting
(`method.budget`; the default `cpu` budget takes minutes per session on 2 cores), and the
prepared model cache, linked into the scratch HOME at its default place
(`~/.cache/soma/models`) because preparing the models again would take minutes and 3 GB;
it holds converted model weights, no state. Clients ask for short answers per request, as
any client may.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import grpc
import pytest

from soma.client import open_channel
from soma.config import Settings
from soma.jobs.app import make_celery
from soma.jobs.queue import JobQueue
from soma.launcher import start_server
from soma.session.live import from_dict
from soma.storage.session_store import SqliteSessionStore
from soma.v1 import (
    common_pb2,
    dialogue_pb2,
    dialogue_pb2_grpc,
    mining_pb2,
    mining_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)
from tests.servers import free_port, scrape_metrics

pytestmark = pytest.mark.integration

PHASE = common_pb2.SessionPhase.Name
QUERIES = [
    "In one sentence: how do I reverse a list in Python?",
    "In one sentence: how do I sort a list of tuples by the second item?",
    "In one sentence: how do I remove duplicates from a list?",
]
SHORT = common_pb2.GenerationParams(max_new_tokens=16)


@pytest.fixture
def scratch(tmp_path: Path) -> dict:
    """A scratch HOME (with the prepared model cache linked in) and two working directories."""
    home, work_a, work_b = tmp_path / "home", tmp_path / "work-a", tmp_path / "work-b"
    for folder in (home, work_a, work_b):
        folder.mkdir()
    models = Path(os.environ.get("SOMA_MODEL_CACHE", "~/.cache/soma/models")).expanduser().resolve()
    (home / ".cache" / "soma").mkdir(parents=True)
    (home / ".cache" / "soma" / "models").symlink_to(models, target_is_directory=True)
    return {
        "home": home,
        "state": home / ".local" / "state" / "soma",  # where the defaults must put soma's data
        "work_a": work_a,
        "work_b": work_b,
        "env": {"HOME": str(home), "SOMA_METHOD__BUDGET": "tiny"},
        "log": tmp_path / "serve.log",
    }


def _serve(scratch: dict, cwd: Path, **extra_env: str):
    env = {**scratch["env"], **extra_env}
    return start_server("all", env=env, log_path=scratch["log"], cwd=cwd, inherit_env=False)


def _turn(stub, session_id: str, query: str) -> common_pb2.TurnRecord:
    record = None
    for r in stub.Chat(dialogue_pb2.ChatRequest(session_id=session_id, query=query, params=SHORT), timeout=300):
        if r.HasField("turn"):
            record = r.turn
    assert record is not None
    return record


def _history(store: SqliteSessionStore, session_id: str) -> list[str]:
    record, _ = store.get_live(session_id)
    return [t.reason for t in from_dict(record).live.adaptation.history] if record else []


def test_the_defaults_adapt_a_session_to_a_stored_adapter(scratch):
    """Warm-up, mining, training and the gate with the shipped defaults: the training job stores its
    adapter under the default state folder and no job fails (every training job failed before:
    the relative default adapter folder had no file URI)."""
    server = _serve(scratch, scratch["work_a"])
    channel = open_channel(server.address, server.api_key)
    try:
        stub = dialogue_pb2_grpc.DialogueServiceStub(channel)
        sid = stub.OpenSession(dialogue_pb2.OpenSessionRequest()).session.session_id
        for query in QUERIES[:2]:  # W = 2 in the tiny budget
            record = _turn(stub, sid, query)
        assert PHASE(record.phase) == "SESSION_PHASE_ADAPTING"
        sessions = SqliteSessionStore(scratch["state"] / "sessions.db")  # the default session store
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            reasons = _history(sessions, sid)
            failed = [r for r in reasons if "job failed" in r]
            assert not failed, f"{failed}\n{scratch['log'].read_text()[-4000:]}"
            if any("gate accepted generation 1" in r or "gate rejected generation 1" in r for r in reasons):
                break
            time.sleep(1.0)
        else:
            raise AssertionError(f"no gate decision on generation 1 after 600 s: {reasons}")

        adapter = scratch["state"] / "adapters" / sid / "1"
        manifest = json.loads((adapter / "manifest.json").read_text())
        assert manifest["session_id"] == sid and manifest["generation"] == 1
        assert (adapter / "adapter_model.safetensors").stat().st_size == manifest["files"]["adapter_model.safetensors"][
            "size"
        ]
        training = training_pb2_grpc.TrainingServiceStub(grpc.insecure_channel(server.internal_address))
        # the gate has decided: the generation's job results were consumed, and the driver had them forgotten
        with pytest.raises(grpc.RpcError) as info:
            training.GetTrainingJob(training_pb2.GetTrainingJobRequest(job_id=f"train-{sid}-1"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        # the session keeps being served whatever the gate said
        third = _turn(stub, sid, QUERIES[2])
        assert third.turn_index == 3 and third.completion_tokens > 0
    finally:
        channel.close()
        assert server.stop() == 0
    log = scratch["log"].read_text()
    assert "raised unexpected" not in log, log[-4000:]
    assert list(scratch["work_a"].iterdir()) == [], "soma wrote into the working directory"


WARM_ROWS = [{"turn_index": 0, "context": [{"role": "user", "content": "hello"}], "teacher_answer": "hi there"}]


def test_a_restart_drops_stale_queued_jobs_and_another_folder_sees_the_same_sessions(scratch):
    """Jobs left in the queue for sessions that are closed, unknown or not adapting are dropped by
    the worker of the next server before they run; a server started from another working folder
    serves the sessions of the first."""
    server = _serve(scratch, scratch["work_a"])
    with open_channel(server.address, server.api_key) as channel:
        stub = dialogue_pb2_grpc.DialogueServiceStub(channel)
        for sid in ("kept", "closed"):
            stub.OpenSession(dialogue_pb2.OpenSessionRequest(session_id=sid))
            _turn(stub, sid, QUERIES[0])
        stub.CloseSession(dialogue_pb2.CloseSessionRequest(session_id="closed"))
    assert server.stop() == 0

    # what a server stopped mid-adaptation leaves behind: queued jobs of sessions that will not need them
    settings = Settings(state_dir=scratch["state"])
    queue = JobQueue(make_celery(settings.jobs), settings.jobs)
    stale = {
        "mine-closed-1": "unknown",  # the session was closed, hence erased
        "mine-ghost-1": "unknown",  # no such session (its store was wiped, or it never existed)
        "mine-kept-1": "not adapting",  # the session is warming up: no generation 1 is being built
    }
    for job in stale:
        _, session_id, generation = job.split("-")
        queue.submit("mine", session_id, int(generation), [WARM_ROWS])
    assert queue.depth(settings.jobs.mining_queue) == 3

    metrics_port = free_port()
    server = _serve(scratch, scratch["work_b"], SOMA_TELEMETRY__METRICS_PORT=str(metrics_port))
    try:
        with open_channel(server.address, server.api_key) as channel:
            stub = dialogue_pb2_grpc.DialogueServiceStub(channel)
            kept = stub.GetSession(dialogue_pb2.GetSessionRequest(session_id="kept", include_transcript=True))
            assert kept.session.turn_count == 1 and kept.transcript[0].query == QUERIES[0]
            with pytest.raises(grpc.RpcError) as info:  # closed sessions are erased
                stub.GetSession(dialogue_pb2.GetSessionRequest(session_id="closed"))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND

            mining = mining_pb2_grpc.MiningServiceStub(grpc.insecure_channel(server.internal_address))
            deadline = time.monotonic() + 300
            jobs = {}
            while time.monotonic() < deadline:
                jobs = {j: mining.GetMiningJob(mining_pb2.GetMiningJobRequest(job_id=j)).job for j in stale}
                if all(
                    job.state not in (common_pb2.JOB_STATE_QUEUED, common_pb2.JOB_STATE_RUNNING)
                    for job in jobs.values()
                ):
                    break
                time.sleep(0.5)
            for job_id, reason in stale.items():
                job = jobs[job_id]
                assert job.state == common_pb2.JOB_STATE_CANCELLED, (job_id, job)
                assert reason in job.message, (job_id, job.message)
            metrics = scrape_metrics(metrics_port)
            for reason, count in (("unknown", 2), ("not adapting", 1)):
                assert metrics[f'soma_jobs_dropped_total{{kind="mine",reason="{reason}"}}'] == count
            # nothing ran: no mining result, no adapter
            assert not (scratch["state"] / "adapters" / "kept").exists()
    finally:
        assert server.stop() == 0
    log = scratch["log"].read_text()
    assert log.count("dropped job mine-") == 3, log[-4000:]
    assert "mining kept/1" not in log
    assert list(scratch["work_a"].iterdir()) == list(scratch["work_b"].iterdir()) == []
