"""The Celery tasks of a soma worker: thin wrappers that load models once per worker process.

A job that cannot reach a dependency (teacher, adapter store) raises soma.errors.Unavailable
and is retried with exponential backoff; anything else fails the job with its message. A job
redelivered after its worker died starts again with the same seed and writes the same adapter
key, so running it twice is harmless. Before a job runs, the worker asks the session store
whether the session still wants it (soma.session.job_relevance): a job of a closed, unknown or
moved-on session is dropped, ends CANCELLED with the reason, and is counted.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery
from celery.exceptions import Ignore
from opentelemetry import propagate, trace

from soma.config import Settings
from soma.errors import Unavailable
from soma.jobs import work
from soma.jobs.app import MINE_TASK, TRAIN_TASK
from soma.jobs.worker_metrics import JOBS_DROPPED
from soma.session.job_relevance import StaleJob, stale_job

log = logging.getLogger("soma.jobs")
tracer = trace.get_tracer("soma.jobs")


def trace_context(request: Any):
    """The submitter's trace context from the task's message headers (W3C traceparent)."""
    carrier = {}
    headers = getattr(request, "headers", None) or {}
    for key in ("traceparent", "tracestate"):
        value = headers.get(key) if isinstance(headers, dict) else None
        value = value or getattr(request, key, None)
        if value:
            carrier[key] = value
    return propagate.extract(carrier)


def _job_span(task: Any, kind: str, session_id: str, generation: int):
    return tracer.start_as_current_span(
        f"soma.job.{kind}",
        context=trace_context(task.request),
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "gen_ai.conversation.id": session_id,
            "soma.adapter.generation": generation,
            "soma.job.id": str(task.request.id),
            "soma.job.attempt": task.request.retries + 1,
            "messaging.system": "celery",
        },
    )


def load_resources(settings: Settings) -> work.JobResources:
    import torch

    from soma.adaptation.teacher import GrpcTeacher
    from soma.algo import lm, neighbourhood
    from soma.algo.adaptation import Surrogate
    from soma.algo.lora_train import SessionAdapters
    from soma.models.catalog import resolve_model
    from soma.models.chat_backend import TransformersChatBackend
    from soma.storage.adapter_store import open_store

    torch.set_num_threads(settings.jobs.worker_threads)
    cfg = settings.method.config()
    path = resolve_model(settings.surrogate.model, settings.model_cache)
    backend = TransformersChatBackend(path, name=settings.surrogate.model, dtype=settings.surrogate.dtype)
    table = neighbourhood.cached_neighbours(
        lm.input_embeddings(backend.model), cfg.mining.neighbours, settings.model_cache / "neighbours"
    )
    surrogate = Surrogate(backend, SessionAdapters(backend.model, cfg.lora), table)
    teacher = (
        GrpcTeacher(settings.jobs.teacher_address, service_token=settings.server.service_token())
        if settings.jobs.teacher_address
        else None
    )
    return work.JobResources(
        surrogate,
        settings.surrogate.model,
        teacher,
        open_store(settings.adapters),
        cfg,
        serve_tokens=settings.surrogate.default_max_new_tokens,
    )


def open_sessions(settings: Settings):
    """The session store the dialogue service writes (SQLite file or Redis), read-only use here."""
    from soma.storage.session_store import open_session_store

    return open_session_store(settings.dialogue)


def check_session(sessions: Any, session_id: str, generation: int) -> StaleJob | None:
    """Why the job should be dropped, or None. A store that cannot be opened or read drops nothing
    (`sessions` is the store, or a callable that opens it)."""
    from soma.session.live import from_dict
    from soma.storage.session_store import SessionMissing

    try:
        sessions = sessions() if callable(sessions) else sessions
        state = sessions.get(session_id)
        record = sessions.get_live(session_id)[0] if state is not None else None
    except SessionMissing:
        state, record = None, None
    except Exception as err:  # noqa: BLE001 - any store error: run the job rather than lose it
        log.warning("cannot read session %s to check its job (%s); running the job", session_id, err)
        return None
    adaptation = from_dict(record).live.adaptation if record else None
    return stale_job(session_id, generation, state, adaptation)


def register_tasks(app: Celery, settings: Settings, resources_factory=None, sessions_factory=None) -> None:
    holder: dict[str, Any] = {}
    lock = threading.Lock()

    def sessions():
        with lock:
            if "s" not in holder:
                holder["s"] = (sessions_factory or open_sessions)(settings)
            return holder["s"]

    def drop_if_stale(task: Any, kind: str, session_id: str, generation: int) -> None:
        """Raise Ignore (the message is acknowledged, nothing runs) after marking the job CANCELLED."""
        stale = check_session(sessions, session_id, generation)  # opened lazily, inside the fail-open
        if stale is None:
            return
        log.warning("dropped job %s before it ran: %s", task.request.id, stale.message)
        JOBS_DROPPED.labels(kind, stale.reason).inc()
        task.backend.mark_as_revoked(task.request.id, f"dropped before it ran: {stale.message}", request=task.request)
        raise Ignore()

    def resources() -> work.JobResources:
        with lock:
            if "r" not in holder:
                holder["r"] = (resources_factory or load_resources)(settings)
            return holder["r"]

    retry = {
        "autoretry_for": (Unavailable,),
        "retry_backoff": settings.jobs.retry_backoff_s,
        "retry_backoff_max": 120,
        "retry_jitter": False,
        "max_retries": settings.jobs.max_retries,
    }

    def count_delivery(task: Any) -> None:
        """Fail a job delivered more than jobs.max_deliveries times (each time its worker died); the
        copy of its arguments kept for a requeue (soma.jobs.queue) is no longer needed once it runs."""
        task.backend.delete(f"soma-args-{task.request.id}".encode())
        key = f"soma-deliveries-{task.request.id}".encode()
        raw = task.backend.get(key)
        count = (int(raw) if raw else 0) + 1
        task.backend.set(key, str(count))
        if count > settings.jobs.max_deliveries:
            raise RuntimeError(
                f"job {task.request.id} was delivered {count} times and its worker died each time; giving up"
            )

    def reporter(task: Any, session_id: str, generation: int):
        def progress(fraction: float, stage: str) -> None:
            meta = {
                "progress": fraction,
                "stage": stage,
                "session_id": session_id,
                "generation": generation,
                "attempt": task.request.retries + 1,
            }
            task.update_state(state="PROGRESS", meta=meta)
            trace.get_current_span().add_event("progress", {"soma.progress": fraction, "soma.stage": stage})

        return progress

    # shared=False: these closures belong to this app (and its settings), not to every Celery app in the process
    @app.task(name=MINE_TASK, bind=True, shared=False, **retry)
    def mine(self, session_id: str, generation: int, warm_turns: list[dict]) -> dict:
        drop_if_stale(self, "mine", session_id, generation)
        if not self.request.retries:
            count_delivery(self)
        log.info("mining %s/%s (attempt %s)", session_id, generation, self.request.retries + 1)
        with _job_span(self, "mine", session_id, generation):
            out = work.run_mining(
                resources(), session_id, generation, warm_turns, reporter(self, session_id, generation)
            )
        return {**out, "attempt": self.request.retries + 1}

    @app.task(name=TRAIN_TASK, bind=True, shared=False, **retry)
    def train(
        self, session_id: str, generation: int, warm_turns: list[dict], warm_hardness: list[float], mined: list[dict]
    ) -> dict:
        drop_if_stale(self, "train", session_id, generation)
        if not self.request.retries:
            count_delivery(self)
        log.info("training %s/%s (attempt %s)", session_id, generation, self.request.retries + 1)
        with _job_span(self, "train", session_id, generation) as span:
            out = work.run_training(
                resources(),
                session_id,
                generation,
                warm_turns,
                warm_hardness,
                mined,
                reporter(self, session_id, generation),
            )
            span.set_attribute("soma.adapter.uri", out["uri"])
            span.set_attribute("soma.adapter.sha256", out["sha256"])
        gone = check_session(sessions, session_id, generation)
        if gone is not None and gone.reason in ("closed", "unknown"):  # erased while the job ran
            resources().store.delete_generation(session_id, generation)
            log.warning("job %s: %s; deleted the adapter it wrote", self.request.id, gone.message)
            JOBS_DROPPED.labels("train", "erased").inc()
            self.backend.mark_as_revoked(
                self.request.id, f"the session was erased while the job ran: {gone.message}", request=self.request
            )
            raise Ignore()
        return {**out, "attempt": self.request.retries + 1}
