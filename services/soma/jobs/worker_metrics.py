"""Prometheus metrics of the job worker, kept in prometheus_client's multiprocess files.

A job runs in a prefork child of `soma worker`, so its counters live in files (one per process)
in the worker's metrics folder, `<state_dir>/worker-metrics`. Whoever serves /metrics reads
that folder: the worker itself when `telemetry.metrics_port` is set (a worker pod), or
`soma serve --target all`, whose worker is a child process on the same machine. Only worker
code imports this module, so a serving process never holds a second copy of these series.
"""

from __future__ import annotations

import prometheus_client

JOBS_DROPPED = prometheus_client.Counter(
    "soma_jobs_dropped",
    "Jobs dropped before they ran because their session no longer needed them, by kind and reason "
    "(unknown, closed, superseded, not adapting).",
    ["kind", "reason"],
)
