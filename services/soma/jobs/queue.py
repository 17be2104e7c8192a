"""Submitting jobs and reading their status: what the mining and training services do with Celery.

The job id is the idempotency key: `{kind}-{session}-{generation}`. Submitting it again returns
the existing job instead of enqueuing a second one (a marker is written to the result backend
before the task is sent; two racing submits may both send it, and the work is idempotent).

A job still PENDING that is no longer in the broker (neither waiting nor, on Redis, reserved) was
taken by a worker that died before starting it; after `jobs.requeue_after_s` of that, reading its
status sends it again (a copy of its arguments is kept beside the marker until a worker starts
it, or the job is forgotten). Forgetting a job also removes
its message from the broker if it is still waiting there.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from opentelemetry import propagate

from soma.adapter_identity import check_key
from soma.config import JobsSettings
from soma.errors import NotFound, Unavailable
from soma.ids import is_valid_session_id
from soma.jobs import broker_messages
from soma.jobs.app import MINE_TASK, TRAIN_TASK
from soma.session.job_token import job_name
from soma.telemetry.metrics import JOBS_REQUEUED

KINDS = {"mine": (MINE_TASK, "mining_queue"), "train": (TRAIN_TASK, "training_queue")}
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}
log = logging.getLogger("soma.jobs")


@dataclass(frozen=True)
class JobView:
    job_id: str
    session_id: str
    generation: int
    state: str  # QUEUED | RUNNING | SUCCEEDED | FAILED | CANCELLED
    progress: float
    stage: str
    message: str
    attempt: int
    result: dict | None = None

    @property
    def done(self) -> bool:
        return self.state in TERMINAL


def job_id(kind: str, session_id: str, generation: int) -> str:
    check_key(session_id, generation)
    return job_name(kind, session_id, generation)


_JOB_ID = re.compile(r"(mine|train)-(.+)-([1-9][0-9]{0,9})")


def is_job_id(jid: str) -> bool:
    """Whether `jid` has the form of a job id (`{kind}-{session}-{generation}`, a valid session id):
    anything else names no job and never reaches the result backend as a key."""
    match = _JOB_ID.fullmatch(jid)
    return bool(match) and is_valid_session_id(match.group(2))


def _unreachable_errors() -> tuple[type[BaseException], ...]:
    from kombu.exceptions import OperationalError

    errors: list[type[BaseException]] = [OperationalError, ConnectionError]
    try:
        import redis

        errors += [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
    except ImportError:  # a broker without Redis
        pass
    return tuple(errors)


def _unavailable_when_unreachable(fn):
    """A broker or result backend that cannot be reached (Redis down or restarting) is UNAVAILABLE
    to the caller, who retries; it would otherwise reach the client as INTERNAL."""

    @functools.wraps(fn)
    def call(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except _UNREACHABLE as err:
            raise Unavailable(
                f"the job queue is unreachable ({type(err).__name__}: {err}); nothing was changed, retry later"
            ) from err

    return call


_UNREACHABLE = _unreachable_errors()


class JobQueue:
    def __init__(self, app: Celery, settings: JobsSettings, clock=time.monotonic, wall=time.time):
        self.app = app
        self.settings = settings
        self.clock, self.wall = clock, wall
        self.requeued = 0  # jobs sent again because their worker never started them
        self._absent_since: dict[str, float] = {}  # PENDING jobs seen missing from the broker, since when
        self._waiting_cache: dict[str, tuple[float, set[str] | None]] = {}
        self._lock = threading.Lock()

    @_unavailable_when_unreachable
    def depth(self, queue: str) -> int:
        """Messages waiting in a queue (the broker's own count: files, or a Redis list's length)."""
        with self.app.connection_for_read() as conn:
            return conn.default_channel.queue_declare(queue=queue, passive=True).message_count

    def _marker(self, jid: str) -> bytes:
        return f"soma-submitted-{jid}".encode()  # bytes: the file backend's key type; Redis takes either

    def _read_marker(self, jid: str) -> dict | None:
        raw = self.app.backend.get(self._marker(jid))
        return json.loads(raw) if raw is not None else None

    def _args_key(self, jid: str) -> bytes:
        return f"soma-args-{jid}".encode()

    def _send(self, task: str, queue: str, jid: str, args: list[Any]) -> None:
        headers: dict[str, str] = {}
        propagate.inject(headers)  # the job's spans join the submitter's trace
        self.app.send_task(task, args=args, task_id=jid, queue=queue, headers=headers)

    @_unavailable_when_unreachable
    def submit(self, kind: str, session_id: str, generation: int, args: list[Any]) -> JobView:
        task, queue_key = KINDS[kind]
        jid = job_id(kind, session_id, generation)
        if self._read_marker(jid) is None:
            marker = {"session_id": session_id, "generation": generation, "kind": kind, "submitted": time.time()}
            self.app.backend.set(self._marker(jid), json.dumps(marker))
            full_args = [session_id, generation, *args]
            try:
                self.app.backend.set(self._args_key(jid), json.dumps(full_args))  # for a requeue
                self._send(task, getattr(self.settings, queue_key), jid, full_args)
            except Exception as err:  # noqa: BLE001 - the broker's errors vary by transport
                self.app.backend.delete(self._marker(jid))  # not enqueued: a retry must enqueue it
                self.app.backend.delete(self._args_key(jid))
                raise Unavailable(f"the job queue is unreachable ({type(err).__name__}: {err}); retry later") from err
        return self.status(jid, kind)

    def _waiting(self, queue: str) -> set[str] | None:
        """The broker's waiting (and, on Redis, reserved) task ids, read at most once a second per
        queue however many jobs are polled."""
        now = self.clock()
        with self._lock:
            cached = self._waiting_cache.get(queue)
            if cached is not None and now - cached[0] < 1.0:
                return cached[1]
        ids = broker_messages.waiting_ids(self.app, queue)
        with self._lock:
            self._waiting_cache[queue] = (now, ids)
        return ids

    def _requeue_if_lost(self, jid: str, kind: str, submitted: float) -> bool:
        """Send a PENDING job again when it has been missing from the broker (taken by a worker that
        never started it) for `requeue_after_s`; True when it was sent. Two sends of one job are
        harmless: the work is idempotent per (session, generation)."""
        after = self.settings.requeue_after_s
        if after <= 0 or self.wall() - float(submitted) < after:
            return False  # off, or too young to have been lost: no broker read
        task, queue_key = KINDS[kind]
        queue = getattr(self.settings, queue_key)
        try:
            waiting = self._waiting(queue)
        except Exception as err:  # noqa: BLE001 - a broker that cannot be read now: decide on a later read
            log.debug("cannot read queue %s (%s)", queue, err)
            return False
        now = self.clock()
        with self._lock:
            if waiting is None or jid in waiting:
                self._absent_since.pop(jid, None)
                return False
            since = self._absent_since.setdefault(jid, now)
            if now - since < after:
                return False
            self._absent_since[jid] = now  # the next requeue, if ever, one more period later
        raw = self.app.backend.get(self._args_key(jid))
        if raw is None or AsyncResult(jid, app=self.app).state != "PENDING":  # started meanwhile, or forgotten
            return False
        self._send(task, queue, jid, json.loads(raw))
        self.requeued += 1
        JOBS_REQUEUED.labels(queue).inc()
        log.warning("job %s was taken from queue %s but never started for %.0f s: sent again", jid, queue, after)
        return True

    @_unavailable_when_unreachable
    def forget(self, jid: str, *, purge: bool = True) -> bool:
        """Delete what the backend keeps of a job (result, submission marker, arguments, delivery
        count) and, with `purge`, its message if still waiting in the broker; False when the backend
        has no record of it. A copy a worker already took is dropped by that worker: its session no
        longer wants it."""
        if self._read_marker(jid) is None:
            return False
        self.app.backend.delete(self._args_key(jid))  # first: no requeue can send it again from here on
        if purge:
            self._purge({jid})
        AsyncResult(jid, app=self.app).forget()
        for key in (f"soma-deliveries-{jid}".encode(), self._marker(jid)):
            self.app.backend.delete(key)
        with self._lock:
            self._absent_since.pop(jid, None)
        return True

    def _purge(self, jids: set[str]) -> None:
        """Take the jobs' waiting messages out of the broker; a broker that fails here does not stop
        the rest of the forgetting (a message left behind is dropped unrun by its worker)."""
        for kind, (_, queue_key) in KINDS.items():
            mine = {j for j in jids if j.startswith(f"{kind}-")}
            if not mine:
                continue
            try:
                removed = broker_messages.remove_waiting(self.app, getattr(self.settings, queue_key), mine)
            except Exception as err:  # noqa: BLE001 - any broker error: forget the rest anyway
                log.warning("could not remove waiting %s messages from the broker: %s", kind, err)
                continue
            if removed:
                log.info("removed %d waiting %s messages from the broker", removed, kind)

    @_unavailable_when_unreachable
    def forget_session(self, session_id: str, up_to_generation: int = 0) -> int:
        """Forget the mining and training jobs of generations 1..up_to_generation (0: until five
        generations in a row have none), their waiting messages removed from the broker first; the
        number forgotten."""
        forgotten, missing, generation, seen = 0, 0, 1, set()
        while (generation <= up_to_generation) if up_to_generation else missing < 5:
            jids = {job_id(kind, session_id, generation) for kind in KINDS}
            known = {j for j in jids if self._read_marker(j) is not None}
            seen |= known
            missing = 0 if known else missing + 1
            generation += 1
        for jid in seen:
            self.app.backend.delete(self._args_key(jid))
        self._purge(seen)
        for jid in seen:
            forgotten += self.forget(jid, purge=False)
        return forgotten

    @_unavailable_when_unreachable
    def status(self, jid: str, kind: str | None = None) -> JobView:
        marker = self._read_marker(jid) if is_job_id(jid) else None
        if marker is None or (kind is not None and marker.get("kind") != kind):
            what = {"mine": "mining ", "train": "training "}.get(kind or "", "")
            shown = jid if len(jid) <= 80 else jid[:80] + f"... ({len(jid)} characters)"  # never echo 70 kB back
            raise NotFound(f"no {what}job {shown!r}; submit it first")
        result = AsyncResult(jid, app=self.app)
        state, info = result.state, result.info
        # the attempt a job is on: in its progress (and result) meta; the backend keeps no arguments
        attempt = int(info.get("attempt", 1)) if isinstance(info, dict) else 1
        common = {"job_id": jid, "session_id": marker["session_id"], "generation": int(marker["generation"])}
        if state == "PENDING":
            stage = (
                "queued again: its worker never started it"
                if self._requeue_if_lost(jid, marker["kind"], marker.get("submitted", 0))
                else "queued"
            )
            return JobView(**common, state="QUEUED", progress=0.0, stage=stage, message="", attempt=attempt)
        if state in ("STARTED", "PROGRESS"):
            meta = info if isinstance(info, dict) else {}
            return JobView(
                **common,
                state="RUNNING",
                progress=float(meta.get("progress", 0.0)),
                stage=str(meta.get("stage", "started")),
                message="",
                attempt=attempt,
            )
        if state == "RETRY":
            return JobView(
                **common, state="RUNNING", progress=0.0, stage="waiting to retry", message=str(info), attempt=attempt
            )
        if state == "SUCCESS":
            return JobView(
                **common,
                state="SUCCEEDED",
                progress=1.0,
                stage="done",
                message="",
                attempt=attempt,
                result=info if isinstance(info, dict) else None,
            )
        if state == "REVOKED":
            message = str(info) if isinstance(info, BaseException) else ""
            return JobView(
                **common, state="CANCELLED", progress=0.0, stage="cancelled", message=message, attempt=attempt
            )
        return JobView(
            **common,
            state="FAILED",
            progress=0.0,
            stage="failed",
            message=f"{type(info).__name__}: {info}",
            attempt=attempt,
        )
