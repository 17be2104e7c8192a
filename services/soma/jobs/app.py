"""The Celery app: queues, routing and delivery guarantees, from soma's typed settings.

Cluster mode uses Redis as broker and result backend; embedded mode uses Celery's filesystem
transport and file result backend under `jobs.local_dir`, so `soma serve --target all` needs
no broker process. The task code is the same in both.

Delivery: `acks_late` + `reject_on_worker_lost` (a job whose worker process dies is delivered
again), a soft shutdown that requeues the running job when the worker is stopped, prefetch 1 (a
long job never holds a second one hostage), soft and hard time limits, and a cap on deliveries
(soma.jobs.tasks) so a job that keeps killing its worker ends FAILED instead of looping.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from celery import Celery
from celery.backends.filesystem import FilesystemBackend
from kombu.utils.encoding import ensure_bytes

from soma.config import JobsSettings

MINE_TASK = "soma.jobs.mine"
TRAIN_TASK = "soma.jobs.train"


class AtomicFilesystemBackend(FilesystemBackend):
    """Celery's file result backend, but each write is a rename: a reader never sees a half-written
    status (the stock backend rewrites in place, so a status read mid-write looked PENDING)."""

    def set(self, key, value):
        path = self._filename(key)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=b".tmp-")
        with os.fdopen(fd, "wb") as out:
            out.write(ensure_bytes(value))
        os.replace(tmp, path)

    def delete(self, key):
        """Deleting what is not there is done (the stock backend raises): forgetting a job that is
        still queued has no result file yet."""
        with contextlib.suppress(FileNotFoundError):
            super().delete(key)


def _embedded_urls(local_dir: Path) -> tuple[str, str, dict]:
    root = local_dir.expanduser().resolve()
    queue, processed, results, control = root / "queue", root / "processed", root / "results", root / "control"
    for folder in (queue, processed, results, control):
        folder.mkdir(parents=True, exist_ok=True)
    options = {
        "data_folder_in": str(queue),
        "data_folder_out": str(queue),
        "processed_folder": str(processed),
        "control_folder": str(control),  # kombu's default is ./control in the working directory
    }
    return "filesystem://", f"{__name__}:AtomicFilesystemBackend+file://{results}", options


def make_celery(settings: JobsSettings) -> Celery:
    broker, backend, options = settings.broker_url, settings.result_backend, {}
    if not broker or not backend:
        fs_broker, fs_backend, fs_options = _embedded_urls(settings.local_dir)
        if not broker:
            broker, options = fs_broker, fs_options
        backend = backend or fs_backend
    app = Celery("soma", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(
        broker_transport_options={**options, "visibility_timeout": int(settings.time_limit_s) + 60}
        if broker.startswith("redis")
        else options,
        broker_connection_retry_on_startup=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_track_started=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.soft_time_limit_s,
        task_time_limit=settings.time_limit_s,
        task_routes={MINE_TASK: {"queue": settings.mining_queue}, TRAIN_TASK: {"queue": settings.training_queue}},
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # the result backend keeps a job's status and result, not its arguments (the warm turns' text):
        # the attempt number travels in the job's own progress and result instead (soma.jobs.queue
        # keeps one copy of them while the job waits, for a requeue; the worker deletes it at start)
        result_extended=False,
        worker_hijack_root_logger=False,
        # on SIGTERM a worker waits this long for its running job, then stops it and puts it back
        # on the queue (acks_late): a job is never lost because its worker was stopped
        worker_soft_shutdown_timeout=settings.shutdown_wait_s,
        worker_enable_soft_shutdown_on_idle=True,
        result_expires=7 * 24 * 3600,  # job status (and the submission marker) outlive any session's adaptation
    )
    return app
