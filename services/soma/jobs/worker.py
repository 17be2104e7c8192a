"""`soma worker --queues …`: a Celery worker (prefork: a job runs in a child process, so a child
that dies is noticed and its job delivered again) with soma's tasks registered."""

from __future__ import annotations

import os
import sys

from soma.config import Settings
from soma.jobs.app import make_celery
from soma.jobs.metrics_folder import serve_worker_metrics, worker_metrics_dir
from soma.jobs.tasks import register_tasks
from soma.launcher import exit_with_parent
from soma.telemetry.logs import configure_logging


def run_worker(settings: Settings, queues: str, concurrency: int = 1) -> int:
    configure_logging(settings.telemetry.log_level, settings.telemetry.log_format)
    names = [q.strip() for q in queues.split(",") if q.strip()]
    known = {settings.jobs.mining_queue, settings.jobs.training_queue}
    unknown = [q for q in names if q not in known]
    if not names or unknown:
        print(
            f"soma worker: unknown queue(s) {', '.join(unknown) or '(none)'}; use {', '.join(sorted(known))}",
            file=sys.stderr,
        )
        return 2
    exit_with_parent("SOMA_WORKER_PARENT_PID")
    if settings.jobs.worker_nice:
        # jobs yield the CPU to serving: a turn's threads run first, the jobs use what is left
        os.nice(settings.jobs.worker_nice)
    from soma.telemetry.tracing import setup_tracing

    setup_tracing(f"{settings.telemetry.service_name}-worker", settings.telemetry.otlp_endpoint)
    serve_worker_metrics(worker_metrics_dir(settings.state_dir), settings.telemetry.metrics_port, settings.server.host)
    app = make_celery(settings.jobs)
    register_tasks(app, settings)
    print(f"soma worker consuming {', '.join(names)}", flush=True)
    app.worker_main(
        [
            "worker",
            "-Q",
            ",".join(names),
            "--pool",
            "prefork",
            "--concurrency",
            str(concurrency),
            "--loglevel",
            settings.telemetry.log_level,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"soma-{'+'.join(names)}@%h",
        ]
    )
    return 0
