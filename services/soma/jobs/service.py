"""MiningService and TrainingService: Submit / Get / Watch over the job queue.

A submission is admitted against the session store first (soma.jobs.admission): signed by the
session's driver, for the generation it is building, on warm turns read from the stored transcript.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc

from soma.chat import LENGTH, STOP
from soma.errors import FailedPrecondition, InvalidArgument
from soma.jobs.admission import JobAdmission
from soma.jobs.queue import JobQueue, JobView, job_id
from soma.server.app import HostedService
from soma.storage.session_store import SessionStore
from soma.v1 import common_pb2, gate_pb2, mining_pb2, mining_pb2_grpc, training_pb2, training_pb2_grpc
from soma.wire import finish_to_proto

_STATES = {
    "QUEUED": common_pb2.JOB_STATE_QUEUED,
    "RUNNING": common_pb2.JOB_STATE_RUNNING,
    "SUCCEEDED": common_pb2.JOB_STATE_SUCCEEDED,
    "FAILED": common_pb2.JOB_STATE_FAILED,
    "CANCELLED": common_pb2.JOB_STATE_CANCELLED,
}
WATCH_POLL_S = 0.2
MAX_FORGET_GENERATIONS = 10_000  # far beyond any session's; `soma bench fuzz` found 2**32 tied a thread for days


def job_status(view: JobView) -> common_pb2.JobStatus:
    return common_pb2.JobStatus(
        job_id=view.job_id,
        session_id=view.session_id,
        generation=view.generation,
        state=_STATES[view.state],
        progress=view.progress,
        stage=view.stage,
        message=view.message,
        attempt=view.attempt,
    )


def _check_ids(session_id: str, generation: int) -> None:
    if generation < 1:
        raise InvalidArgument("generation must be ≥ 1")
    job_id("x", session_id, generation)  # raises InvalidArgument for unsafe session ids


def _watch(queue: JobQueue, jid: str, kind: str, context: grpc.ServicerContext, make) -> Iterator:
    last = None
    while context.is_active():
        view = queue.status(jid, kind)
        key = (view.state, round(view.progress, 4), view.stage, view.message, view.attempt)
        if key != last:
            last = key
            yield make(job_status(view))
        if view.done:
            return
        time.sleep(WATCH_POLL_S)


class MiningServicer(mining_pb2_grpc.MiningServiceServicer):
    def __init__(self, queue: JobQueue, admission: JobAdmission):
        self.queue = queue
        self.admission = admission

    def SubmitMiningJob(self, request, context):
        _check_ids(request.session_id, request.generation)
        warm = self.admission.warm_rows(
            "mine", request.session_id, request.generation, request.generation_token, request.warm_turns
        )
        view = self.queue.submit("mine", request.session_id, request.generation, [warm])
        return mining_pb2.SubmitMiningJobResponse(job=job_status(view))

    def GetMiningJob(self, request, context):
        view = self.queue.status(request.job_id, "mine")
        response = mining_pb2.GetMiningJobResponse(job=job_status(view))
        if view.state == "SUCCEEDED" and view.result:
            for c in view.result["cases"]:
                response.cases.append(
                    mining_pb2.MinedCase(
                        turn_index=c["turn_index"],
                        verbalized_prompt=c["verbalized_prompt"],
                        teacher_answer=c["teacher_answer"],
                        hardness=c["hardness"],
                        finish_reason=finish_to_proto(STOP if c["finished"] else LENGTH),
                    )
                )
            response.warm_hardness.extend(view.result["warm_hardness"])
        return response

    def WatchMiningJob(self, request, context):
        yield from _watch(
            self.queue, request.job_id, "mine", context, lambda job: mining_pb2.WatchMiningJobResponse(job=job)
        )


class TrainingServicer(training_pb2_grpc.TrainingServiceServicer):
    def __init__(self, queue: JobQueue, admission: JobAdmission):
        self.queue = queue
        self.admission = admission

    def SubmitTrainingJob(self, request, context):
        _check_ids(request.session_id, request.generation)
        if request.mined_cases or request.warm_hardness:
            raise InvalidArgument(
                "mined_cases and warm_hardness are no longer accepted: give mining_job_id, and the training "
                "service reads the cases from the mining job"
            )
        if not request.mining_job_id:
            raise InvalidArgument("mining_job_id is empty: training starts from the session's succeeded mining job")
        expected = job_id("mine", request.session_id, request.generation)
        if request.mining_job_id != expected:
            raise InvalidArgument(
                f"mining_job_id={request.mining_job_id!r} is not the mining job of session {request.session_id} "
                f"generation {request.generation} ({expected})"
            )
        warm = self.admission.warm_rows(
            "train", request.session_id, request.generation, request.generation_token, request.warm_turns
        )
        view = self.queue.status(request.mining_job_id, "mine")  # NOT_FOUND when the backend has no such job
        if view.state != "SUCCEEDED" or not view.result:
            raise FailedPrecondition(
                f"mining job {request.mining_job_id} is {view.state}: training starts from a succeeded mining job"
            )
        warm_hardness = [float(h) for h in view.result["warm_hardness"]]
        mined = [dict(c) for c in view.result["cases"]]
        if warm_hardness and len(warm_hardness) != len(warm):
            raise InvalidArgument(
                f"the mining job scored {len(warm_hardness)} warm turns, this request names {len(warm)}: "
                "send the warm turns the mining job was given"
            )
        for j, c in enumerate(mined):
            if c["turn_index"] >= len(warm):
                raise InvalidArgument(f"mined case {j} names warm turn {c['turn_index']}, which this request lacks")
        view = self.queue.submit("train", request.session_id, request.generation, [warm, warm_hardness, mined])
        return training_pb2.SubmitTrainingJobResponse(job=job_status(view))

    def ForgetSessionJobs(self, request, context):
        job_id("x", request.session_id, max(1, request.up_to_generation))  # INVALID_ARGUMENT for unsafe ids
        if request.up_to_generation > MAX_FORGET_GENERATIONS:  # each generation costs backend reads
            raise InvalidArgument(
                f"up_to_generation={request.up_to_generation}; the limit is {MAX_FORGET_GENERATIONS} (0 = all)"
            )
        self.admission.check_forget(request.session_id, request.up_to_generation, request.generation_token)
        forgotten = self.queue.forget_session(request.session_id, request.up_to_generation)
        return training_pb2.ForgetSessionJobsResponse(forgotten=forgotten)

    def GetTrainingJob(self, request, context):
        view = self.queue.status(request.job_id, "train")
        response = training_pb2.GetTrainingJobResponse(job=job_status(view))
        if view.state == "SUCCEEDED" and view.result:
            r = view.result
            response.adapter.CopyFrom(
                training_pb2.AdapterInfo(
                    uri=r["uri"],
                    sha256=r["sha256"],
                    base_model=r["base_model"],
                    rank=r["rank"],
                    metrics={k: float(v) for k, v in r["metrics"].items()},
                )
            )
            for e in r["acceptance"]:
                response.acceptance.append(gate_pb2.AcceptanceExample(**e))
        return response

    def WatchTrainingJob(self, request, context):
        yield from _watch(
            self.queue, request.job_id, "train", context, lambda job: training_pb2.WatchTrainingJobResponse(job=job)
        )


class QueueDepthCollector:
    """soma_queue_depth{queue}, read from the broker when Prometheus scrapes (KEDA scales on the same count)."""

    def __init__(self, queue: JobQueue):
        self.queue = queue

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("soma_queue_depth", "Jobs waiting in each queue.", labels=["queue"])
        for name in (self.queue.settings.mining_queue, self.queue.settings.training_queue):
            try:
                family.add_metric([name], self.queue.depth(name))
            except Exception:  # noqa: BLE001 - a broker that is down has no depth to report
                continue
        yield family


_depth_registered = False


def register_queue_depth(queue: JobQueue) -> None:
    global _depth_registered
    if not _depth_registered:
        import prometheus_client

        prometheus_client.REGISTRY.register(QueueDepthCollector(queue))
        _depth_registered = True


def hosted_mining(queue: JobQueue, sessions: SessionStore) -> HostedService:
    servicer = MiningServicer(queue, JobAdmission(sessions))
    return HostedService(
        name=mining_pb2.DESCRIPTOR.services_by_name["MiningService"].full_name,
        register=lambda server: mining_pb2_grpc.add_MiningServiceServicer_to_server(servicer, server),
    )


def hosted_training(queue: JobQueue, sessions: SessionStore) -> HostedService:
    servicer = TrainingServicer(queue, JobAdmission(sessions))
    return HostedService(
        name=training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name,
        register=lambda server: training_pb2_grpc.add_TrainingServiceServicer_to_server(servicer, server),
    )
