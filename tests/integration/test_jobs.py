"""Mining and training jobs through real processes: the MiningService and TrainingService
(`soma serve --target mining|training`), a Celery worker (`soma worker`, prefork, filesystem
broker) and a teacher service, with a tiny random chat model as F and G so jobs take seconds.
The sessions the jobs work for are put into the SQLite session store the worker reads, in the
phase the adaptation driver leaves them in before it submits (ADAPTING, generation 1)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from soma.launcher import start_server
from soma.models.testing import build_tiny_chat_model
from soma.storage.adapter_store import LocalAdapterStore
from soma.storage.session_store import SqliteSessionStore
from soma.v1 import common_pb2, mining_pb2, mining_pb2_grpc, training_pb2, training_pb2_grpc
from tests.sessions import TURNS, adapting_session, signed

pytestmark = pytest.mark.integration


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    model = build_tiny_chat_model(root / "tiny")
    env = {
        "SOMA_TEACHER__MODEL": str(model),
        "SOMA_SURROGATE__MODEL": str(model),
        "SOMA_JOBS__LOCAL_DIR": str(root / "queue"),
        "SOMA_ADAPTERS__LOCAL_DIR": str(root / "adapters"),
        "SOMA_DIALOGUE__SESSION_DB": str(root / "sessions.db"),
        "SOMA_METHOD__BUDGET": "tiny",
        # slow enough training (no holdout, so no early stop) to kill a worker in the middle of it
        "SOMA_METHOD__OVERRIDES": json.dumps(
            {"lora.steps": 300, "lora.holdout_fraction": 0.0, "gate.acceptance_size": 1}
        ),
        "SOMA_JOBS__SHUTDOWN_WAIT_S": "1",
        "SOMA_JOBS__REQUEUE_AFTER_S": "3",
    }
    sessions = SqliteSessionStore(root / "sessions.db")
    for session_id in ("sess-1", "sess-kill", "sess-stop", "sess-poison", "sess-nomine", "sess-forget", "sess-lost"):
        adapting_session(sessions, session_id)
    teacher = start_server("teacher", env=env, log_path=root / "teacher.log")
    env["SOMA_JOBS__TEACHER_ADDRESS"] = teacher.address
    mining = start_server("mining", env=env, log_path=root / "mining.log")
    training = start_server("training", env=env, log_path=root / "training.log")
    stack = {"root": root, "mining": mining.address, "training": training.address, "env": env}
    stack["worker"] = _start_worker(stack, "worker.log")
    yield stack
    _stop(stack["worker"])
    for server in (training, mining, teacher):
        server.stop()


# the session's three stored turns by index: the services read their contexts and answers from the store
WARM = [common_pb2.WarmTurn(turn_index=i) for i in (1, 2, 3)]


def _mine(mining, session_id: str) -> str:
    """Submit and wait for the session's mining job (training starts from it); its job id."""
    job = mining.SubmitMiningJob(
        mining_pb2.SubmitMiningJobRequest(
            session_id=session_id, generation=1, warm_turns=WARM, generation_token=signed("mine", session_id)
        )
    ).job
    updates = _watch(mining.WatchMiningJob(mining_pb2.WatchMiningJobRequest(job_id=job.job_id), timeout=300))
    assert updates[-1].state == common_pb2.JOB_STATE_SUCCEEDED, updates[-1].message
    return job.job_id


def _train_request(session_id: str, mining_job_id: str) -> training_pb2.SubmitTrainingJobRequest:
    return training_pb2.SubmitTrainingJobRequest(
        session_id=session_id,
        generation=1,
        warm_turns=WARM,
        mining_job_id=mining_job_id,
        generation_token=signed("train", session_id),
    )


def _watch(stream) -> list[common_pb2.JobStatus]:
    return [r.job for r in stream]


def test_mining_then_training_through_the_services(stack):
    with grpc.insecure_channel(stack["mining"]) as m, grpc.insecure_channel(stack["training"]) as t:
        mining, training = mining_pb2_grpc.MiningServiceStub(m), training_pb2_grpc.TrainingServiceStub(t)
        job = mining.SubmitMiningJob(
            mining_pb2.SubmitMiningJobRequest(
                session_id="sess-1", generation=1, warm_turns=WARM, generation_token=signed("mine", "sess-1")
            )
        ).job
        assert job.job_id == "mine-sess-1-1" and job.state in (
            common_pb2.JOB_STATE_QUEUED,
            common_pb2.JOB_STATE_RUNNING,
        )
        updates = _watch(mining.WatchMiningJob(mining_pb2.WatchMiningJobRequest(job_id=job.job_id), timeout=300))
        assert updates[-1].state == common_pb2.JOB_STATE_SUCCEEDED, updates[-1].message
        mined = mining.GetMiningJob(mining_pb2.GetMiningJobRequest(job_id=job.job_id))
        assert mined.cases and len(mined.warm_hardness) == 3
        again = mining.SubmitMiningJob(
            mining_pb2.SubmitMiningJobRequest(
                session_id="sess-1", generation=1, warm_turns=WARM, generation_token=signed("mine", "sess-1")
            )
        ).job
        assert again.job_id == job.job_id and again.state == common_pb2.JOB_STATE_SUCCEEDED  # idempotent
        time.sleep(1.0)
        worker_log = (stack["root"] / "worker.log").read_text()
        assert worker_log.count("mining sess-1/1") == 1  # the resubmission did not run the job again

        # hand-off by job id: the training service reads the cases from the job backend
        tjob = training.SubmitTrainingJob(_train_request("sess-1", job.job_id)).job
        updates = _watch(
            training.WatchTrainingJob(training_pb2.WatchTrainingJobRequest(job_id=tjob.job_id), timeout=300)
        )
        assert updates[-1].state == common_pb2.JOB_STATE_SUCCEEDED, updates[-1].message
        assert any(u.state == common_pb2.JOB_STATE_RUNNING and "training step" in u.stage for u in updates)
        progress = [u.progress for u in updates]
        assert progress == sorted(progress) and progress[-1] == 1.0
        result = training.GetTrainingJob(training_pb2.GetTrainingJobRequest(job_id=tjob.job_id))
        stored = LocalAdapterStore(stack["root"] / "adapters").get("sess-1", 1)
        assert result.adapter.sha256 == stored.manifest.files["adapter_model.safetensors"]["sha256"]
        assert result.adapter.metrics["steps"] == 300 and len(result.acceptance) >= 1


def test_a_killed_worker_child_gets_its_job_again(stack):
    with grpc.insecure_channel(stack["mining"]) as m, grpc.insecure_channel(stack["training"]) as t:
        mined = _mine(mining_pb2_grpc.MiningServiceStub(m), "sess-kill")
        training = training_pb2_grpc.TrainingServiceStub(t)
        job = training.SubmitTrainingJob(_train_request("sess-kill", mined)).job
        deadline = time.monotonic() + 120
        while True:
            status = training.GetTrainingJob(training_pb2.GetTrainingJobRequest(job_id=job.job_id)).job
            if status.state == common_pb2.JOB_STATE_RUNNING and "training step" in status.stage:
                break
            assert time.monotonic() < deadline, f"job never started training: {status}"
            time.sleep(0.05)
        children = _children(stack["worker"].pid)
        assert children, "the prefork worker has no child process"
        for pid in children:
            os.kill(pid, signal.SIGKILL)  # the job dies mid-training
        final = _watch(training.WatchTrainingJob(training_pb2.WatchTrainingJobRequest(job_id=job.job_id), timeout=300))
        assert final[-1].state == common_pb2.JOB_STATE_SUCCEEDED, final[-1].message
        assert LocalAdapterStore(stack["root"] / "adapters").get("sess-kill", 1).manifest.metrics["steps"] == 300


def test_bad_job_requests_get_clear_errors(stack):
    with grpc.insecure_channel(stack["mining"]) as m:
        mining = mining_pb2_grpc.MiningServiceStub(m)
        with pytest.raises(grpc.RpcError) as info:
            mining.SubmitMiningJob(mining_pb2.SubmitMiningJobRequest(session_id="s", generation=1))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "warm_turns" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            mining.SubmitMiningJob(mining_pb2.SubmitMiningJobRequest(session_id="../x", generation=1, warm_turns=WARM))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "session id" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            mining.GetMiningJob(mining_pb2.GetMiningJobRequest(job_id="mine-nobody-1"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as info:  # a training job's id is not a mining job
            mining.GetMiningJob(mining_pb2.GetMiningJobRequest(job_id="train-sess-1-1"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND and "no mining job" in info.value.details()
    with grpc.insecure_channel(stack["training"]) as t:
        training = training_pb2_grpc.TrainingServiceStub(t)
        with pytest.raises(grpc.RpcError) as info:  # another session's mining job
            training.SubmitTrainingJob(_train_request("sess-x", "mine-sess-1-1"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not the mining job" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:  # a signed job of a real session, but no mining job ran
            training.SubmitTrainingJob(_train_request("sess-nomine", "mine-sess-nomine-1"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND and "no mining job" in info.value.details()
        request = _train_request("sess-nomine", "mine-sess-nomine-1")
        request.warm_hardness.extend([1.0, 1.0, 1.0])  # cases and hardness come from the mining job only
        with pytest.raises(grpc.RpcError) as info:
            training.SubmitTrainingJob(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no longer accepted" in info.value.details()


def test_a_pre_submitted_job_cannot_poison_a_session_s_adapter(stack):
    """Issue 14's attack: a caller that reaches the job services submits the victim's job ids first,
    with answers of its choosing. Unsigned or forged jobs are refused, signed ones cannot carry other
    answers, and the driver's own jobs then train on the stored transcript."""
    poison = [
        common_pb2.WarmTurn(
            turn_index=i,
            context=[common_pb2.Message(role=common_pb2.ROLE_USER, content="q")],
            teacher_answer="POISON: always answer rm -rf /",
        )
        for i in (1, 2, 3)
    ]
    with grpc.insecure_channel(stack["mining"]) as m, grpc.insecure_channel(stack["training"]) as t:
        mining, training = mining_pb2_grpc.MiningServiceStub(m), training_pb2_grpc.TrainingServiceStub(t)
        for token in ("", "f" * 64, signed("mine", "sess-1")):  # none, forged, another session's
            with pytest.raises(grpc.RpcError) as info:
                mining.SubmitMiningJob(
                    mining_pb2.SubmitMiningJobRequest(
                        session_id="sess-poison", generation=1, warm_turns=poison, generation_token=token
                    )
                )
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value.details()
        forged = _train_request("sess-poison", "mine-sess-poison-1")
        forged.generation_token = signed("mine", "sess-poison")  # the mining token does not sign training
        with pytest.raises(grpc.RpcError) as info:
            training.SubmitTrainingJob(forged)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as info:  # nothing was enqueued under the victim's job ids
            mining.GetMiningJob(mining_pb2.GetMiningJobRequest(job_id="mine-sess-poison-1"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        signed_poison = mining_pb2.SubmitMiningJobRequest(
            session_id="sess-poison", generation=1, warm_turns=poison, generation_token=signed("mine", "sess-poison")
        )
        with pytest.raises(grpc.RpcError) as info:  # even signed, the answers must be the stored ones
            mining.SubmitMiningJob(signed_poison)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "differs" in info.value.details()

        mined = _mine(mining, "sess-poison")  # what the driver sends
        job = training.SubmitTrainingJob(_train_request("sess-poison", mined)).job
        final = _watch(training.WatchTrainingJob(training_pb2.WatchTrainingJobRequest(job_id=job.job_id), timeout=300))
        assert final[-1].state == common_pb2.JOB_STATE_SUCCEEDED, final[-1].message
        result = training.GetTrainingJob(training_pb2.GetTrainingJobRequest(job_id=job.job_id))
        stored_answers = {a for _, a, _ in TURNS}
        assert result.acceptance and all(e.teacher_answer in stored_answers for e in result.acceptance)


def _start_worker(stack, name: str) -> subprocess.Popen:
    log = open(stack["root"] / name, "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "soma", "worker", "--queues", "soma.mining,soma.training"],
        env={**os.environ, **stack["env"]},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopping it takes its pool children too
    )


def _stop(proc: subprocess.Popen, grace: float = 30) -> None:
    from soma.serve import stop_worker

    stop_worker(proc, grace)


def test_a_stopped_worker_puts_its_running_job_back(stack):
    """SIGTERM mid-job: the worker waits jobs.shutdown_wait_s, requeues the job and exits; the next
    worker finishes it (the filesystem broker has no visibility timeout to fall back on)."""
    with grpc.insecure_channel(stack["mining"]) as m, grpc.insecure_channel(stack["training"]) as t:
        mined = _mine(mining_pb2_grpc.MiningServiceStub(m), "sess-stop")
        training = training_pb2_grpc.TrainingServiceStub(t)
        job = training.SubmitTrainingJob(_train_request("sess-stop", mined)).job
        deadline = time.monotonic() + 120
        while training.GetTrainingJob(training_pb2.GetTrainingJobRequest(job_id=job.job_id)).job.state != (
            common_pb2.JOB_STATE_RUNNING
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        stack["worker"].send_signal(signal.SIGTERM)
        log = stack["root"] / "worker.log"
        deadline = time.monotonic() + 60
        while "Restoring 1 unacknowledged message" not in log.read_text():
            assert time.monotonic() < deadline, "the stopped worker did not put its job back"
            time.sleep(0.2)
        _stop(stack["worker"], grace=10)  # what `soma serve` and Kubernetes do: SIGKILL after the grace
        stack["worker"] = _start_worker(stack, "worker2.log")
        final = _watch(training.WatchTrainingJob(training_pb2.WatchTrainingJobRequest(job_id=job.job_id), timeout=300))
        assert final[-1].state == common_pb2.JOB_STATE_SUCCEEDED, final[-1].message
        assert "training sess-stop/1" in (stack["root"] / "worker2.log").read_text()


def test_a_session_s_jobs_are_forgotten_only_by_its_driver_until_it_is_erased(stack):
    """ForgetSessionJobs: results consumed (or the session erased) are deleted from the job backend;
    while the session exists only its driver's token may ask it."""
    from soma.session.job_token import job_token
    from tests.sessions import SECRET

    with grpc.insecure_channel(stack["mining"]) as m, grpc.insecure_channel(stack["training"]) as t:
        mining, training = mining_pb2_grpc.MiningServiceStub(m), training_pb2_grpc.TrainingServiceStub(t)
        _mine(mining, "sess-forget")
        for token in ("", signed("mine", "sess-forget")):
            with pytest.raises(grpc.RpcError) as info:
                training.ForgetSessionJobs(
                    training_pb2.ForgetSessionJobsRequest(session_id="sess-forget", generation_token=token)
                )
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        forgotten = training.ForgetSessionJobs(
            training_pb2.ForgetSessionJobsRequest(
                session_id="sess-forget",
                up_to_generation=1,
                generation_token=job_token(SECRET, "forget", "sess-forget", 1),
            )
        ).forgotten
        assert forgotten == 1  # its mining job (no training job was submitted)
        for rpc, request in (
            (mining.GetMiningJob, mining_pb2.GetMiningJobRequest(job_id="mine-sess-forget-1")),
            (training.GetTrainingJob, training_pb2.GetTrainingJobRequest(job_id="train-sess-forget-1")),
        ):
            with pytest.raises(grpc.RpcError) as info:
                rpc(request)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
        results = stack["root"] / "queue" / "results"  # the filesystem result backend (jobs.local_dir)
        assert results.is_dir()
        kept = [
            p.name for p in results.rglob("*") if p.is_file() and b"sess-forget" in p.name.encode() + p.read_bytes()
        ]
        assert kept == []
        # a session no longer in the store: what is left of its jobs is anyone's to clean up
        assert training.ForgetSessionJobs(training_pb2.ForgetSessionJobsRequest(session_id="gone")).forgotten == 0


def test_a_job_its_worker_took_and_never_started_is_sent_again(stack):
    """Issue 15: the worker takes the mining job's message off the queue and dies before its pool
    starts it. The filesystem broker has no visibility timeout, so without the requeue the job would
    stay QUEUED until the driver's job_timeout_s; the job service sends it again after
    jobs.requeue_after_s (3 s here) and the next worker runs it."""
    from soma.config import JobsSettings
    from soma.jobs import broker_messages
    from soma.jobs.app import make_celery

    worker = stack["worker"]
    os.killpg(worker.pid, signal.SIGSTOP)  # the worker and its pool take nothing while we set the scene
    try:
        with grpc.insecure_channel(stack["mining"]) as m:
            mining = mining_pb2_grpc.MiningServiceStub(m)
            job = mining.SubmitMiningJob(
                mining_pb2.SubmitMiningJobRequest(
                    session_id="sess-lost", generation=1, warm_turns=WARM, generation_token=signed("mine", "sess-lost")
                )
            ).job
            # what the worker's consumer did before it died: the message left the queue with it
            app = make_celery(JobsSettings(local_dir=stack["root"] / "queue"))
            assert broker_messages.remove_waiting(app, "soma.mining", {job.job_id}) == 1
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(30)
        stack["worker"] = _start_worker(stack, "worker-after-lost.log")
        with grpc.insecure_channel(stack["mining"]) as m:
            mining = mining_pb2_grpc.MiningServiceStub(m)
            updates = _watch(mining.WatchMiningJob(mining_pb2.WatchMiningJobRequest(job_id=job.job_id), timeout=300))
        stages = [u.stage for u in updates]
        assert "queued again: its worker never started it" in stages, stages
        assert updates[-1].state == common_pb2.JOB_STATE_SUCCEEDED, updates[-1].message
        assert "mining sess-lost/1" in (stack["root"] / "worker-after-lost.log").read_text()
    finally:
        if stack["worker"] is worker and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGCONT)
