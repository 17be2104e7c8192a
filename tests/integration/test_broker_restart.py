"""The job broker killed while a job is queued: a real redis-server as Celery broker and result
backend (append-only file, `appendfsync always`, as the chart's Redis persists), the mining service
(`soma serve --target mining`), a teacher and a `soma worker`, with a tiny random chat model as F and
G. While Redis is down the job's status is UNAVAILABLE (retry later), never INTERNAL; once Redis is
back on its address the queued job is still there, a worker runs it, and it succeeds."""

from __future__ import annotations

import time

import grpc
import pytest

from soma.launcher import start_server
from soma.models.testing import build_tiny_chat_model
from soma.storage.session_store import SqliteSessionStore
from soma.v1 import common_pb2, mining_pb2, mining_pb2_grpc
from tests.integration.test_jobs import WARM, _start_worker, _stop, _watch
from tests.servers import redis_server
from tests.sessions import adapting_session, signed

pytestmark = pytest.mark.integration


def test_a_job_queued_when_the_broker_dies_runs_once_it_is_back(tmp_path):
    model = build_tiny_chat_model(tmp_path / "tiny")
    redis_dir = tmp_path / "redis"
    with redis_server(redis_dir) as (url, redis_proc):
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        env = {
            "SOMA_TEACHER__MODEL": str(model),
            "SOMA_SURROGATE__MODEL": str(model),
            "SOMA_JOBS__BROKER_URL": url,
            "SOMA_JOBS__RESULT_BACKEND": url,
            "SOMA_ADAPTERS__LOCAL_DIR": str(tmp_path / "adapters"),
            "SOMA_DIALOGUE__SESSION_DB": str(tmp_path / "sessions.db"),
            "SOMA_METHOD__BUDGET": "tiny",
        }
        adapting_session(SqliteSessionStore(tmp_path / "sessions.db"), "broker-1")
        teacher = start_server("teacher", env=env, log_path=tmp_path / "teacher.log")
        env["SOMA_JOBS__TEACHER_ADDRESS"] = teacher.address
        mining_server = start_server("mining", env=env, log_path=tmp_path / "mining.log")
        stack = {"root": tmp_path, "env": env}
        worker = None
        try:
            with grpc.insecure_channel(mining_server.address) as channel:
                mining = mining_pb2_grpc.MiningServiceStub(channel)
                job = mining.SubmitMiningJob(
                    mining_pb2.SubmitMiningJobRequest(
                        session_id="broker-1",
                        generation=1,
                        warm_turns=WARM,
                        generation_token=signed("mine", "broker-1"),
                    )
                ).job
                assert job.state == common_pb2.JOB_STATE_QUEUED  # no worker yet: it waits in Redis
                redis_proc.kill()  # the broker dies with the job in its queue
                redis_proc.wait(10)
                with pytest.raises(grpc.RpcError) as info:
                    mining.GetMiningJob(mining_pb2.GetMiningJobRequest(job_id=job.job_id), timeout=60)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()

                with redis_server(redis_dir, port=port):
                    deadline = time.monotonic() + 30
                    while True:  # the service reconnects by itself
                        try:
                            status = mining.GetMiningJob(mining_pb2.GetMiningJobRequest(job_id=job.job_id)).job
                            break
                        except grpc.RpcError as err:
                            assert err.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline
                            time.sleep(0.5)
                    assert status.state == common_pb2.JOB_STATE_QUEUED  # kept by the append-only file
                    worker = _start_worker(stack, "worker.log")
                    updates = _watch(
                        mining.WatchMiningJob(mining_pb2.WatchMiningJobRequest(job_id=job.job_id), timeout=300)
                    )
                    assert updates[-1].state == common_pb2.JOB_STATE_SUCCEEDED, updates[-1].message
                    assert (tmp_path / "worker.log").read_text().count("mining broker-1/1 ") == 1
        finally:
            if worker is not None:
                _stop(worker)
            mining_server.stop()
            teacher.stop()
