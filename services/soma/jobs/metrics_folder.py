"""Where the job worker's Prometheus metrics live on disk, and who exports them.

`soma worker` runs its jobs in prefork children; prometheus_client's multiprocess mode keeps
every process's counters in files of one folder, which the exporter sums at scrape time.
Nothing here imports prometheus_client at module level: the mode must be chosen (an
environment variable) before that import, which `soma worker` does first thing.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


def worker_metrics_dir(state_dir: Path) -> Path:
    return state_dir / "worker-metrics"


def use_multiprocess_metrics(folder: Path) -> None:
    """Put this process (and the children it forks) in multiprocess mode over `folder`, emptied of
    an earlier run's files. Call before anything imports prometheus_client."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink(missing_ok=True)
    os.environ[ENV] = str(folder)


WORKER_PREFIX = "soma_jobs_"  # the series only a worker has (soma.jobs.worker_metrics)


class _WorkerSeries:
    """The worker's files, summed at scrape time, limited to the worker's own series: its processes
    also hold the serving metrics at zero, which would repeat the exporting process's series."""

    def __init__(self, folder: Path):
        from prometheus_client import multiprocess

        self._inner = multiprocess.MultiProcessCollector(None, path=str(folder))

    def collect(self):
        return [m for m in self._inner.collect() if m.name.startswith(WORKER_PREFIX)]


def export_worker_metrics(folder: Path, registry=None) -> None:
    """Add the worker's own series in `folder` to a registry (default: the process's own), read at
    each scrape."""
    import prometheus_client

    folder.mkdir(parents=True, exist_ok=True)
    (registry or prometheus_client.REGISTRY).register(_WorkerSeries(folder))


def serve_worker_metrics(folder: Path, port: int, host: str) -> None:
    """A worker pod's own /metrics: the summed files of its processes (port 0 = off)."""
    if not port:
        return
    import prometheus_client
    from prometheus_client import multiprocess

    registry = prometheus_client.CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(folder))  # a worker pod: all of its series
    prometheus_client.start_http_server(port, addr=host, registry=registry)
