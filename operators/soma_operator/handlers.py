"""kopf handlers for SomaSession: thin wrappers that call the adaptation driver and status.py.

`register` puts the handlers on a registry given to it (not kopf's global one), so tests and
`python -m soma_operator` each build their own operator from the same code. Handlers are plain
sync functions: kopf runs them on its thread pool, where the driver's blocking gRPC and Redis
calls belong.

- on create: the initial status (WARMUP and its conditions);
- a timer per object: `driver.tick`, then a status patch only when status.decide says so, and
  TTL expiry (delete the object: the finalizer below then cleans up);
- on delete, behind kopf's finalizer: `driver.forget` (adapters out of the adapter store,
  transcript and state out of the session store) before Kubernetes lets the object go;
- from startup to cleanup, every `orphan_sweep_interval_s`: `driver.sweep_orphans` (adapters of
  sessions the session store no longer has, left by a crash mid-erasure).
A failing driver or API call raises kopf.TemporaryError: kopf retries it after the backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Protocol

import kopf

from soma.k8s.session_resource import GROUP, PLURAL, VERSION
from soma_operator import status as st
from soma_operator.metrics import OperatorMetrics
from soma_operator.settings import OperatorSettings

FINALIZER = "soma.dev/session-cleanup"
ANNOTATIONS_PREFIX = "soma.dev"


class Driver(Protocol):
    """soma.adaptation.driver.AdaptationDriver as the operator uses it. Ticks of different sessions
    run in parallel threads (thread-safe), and kopf runs handlers at least once: `forget` may be
    called again for a session it already forgot (idempotent)."""

    def tick(self, session_id: str, now: float) -> dict | None: ...

    def forget(self, session_id: str) -> None: ...

    def sweep_orphans(self) -> list[str]: ...


class Deleter(Protocol):
    def delete_named(self, name: str) -> bool: ...


def kopf_settings(settings: OperatorSettings) -> kopf.OperatorSettings:
    """kopf's settings: our finalizer name, kopf's bookkeeping in annotations (the CRD's status
    schema has no room for it, and status belongs to soma), thread pool size, event posting."""
    ks = kopf.OperatorSettings()
    ks.persistence.finalizer = FINALIZER
    ks.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATIONS_PREFIX)
    ks.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATIONS_PREFIX, key="last-handled-configuration"
    )
    ks.execution.max_workers = settings.max_workers
    # A tick runs in a thread and cannot be cancelled: when its object is deleted mid-tick (TTL
    # expiry deletes from inside the tick), re-check within a second, not kopf's default minute.
    ks.background.cancellation_polling = 1.0
    ks.posting.enabled = settings.post_events
    ks.posting.reporting_component = "soma-operator"
    ks.peering.name = settings.peering
    ks.peering.priority = settings.priority
    ks.peering.standalone = settings.standalone
    ks.peering.mandatory = not settings.standalone
    return ks


def _session_id(spec: Any, name: str) -> str:
    session_id = spec.get("sessionId")
    if not session_id:
        raise kopf.PermanentError(f"SomaSession {name} has no spec.sessionId")
    return str(session_id)


def register(
    registry: kopf.OperatorRegistry,
    driver: Driver,
    settings: OperatorSettings,
    deleter: Callable[[str], Deleter],
    *,
    metrics: OperatorMetrics | None = None,
    clock: Callable[[], float] = time.time,
) -> OperatorMetrics:
    """Put the SomaSession handlers on `registry`. `deleter(namespace)` deletes objects by name
    (soma.k8s.session_resource.SessionResources). Returns the metrics the handlers count into."""
    metrics = metrics or OperatorMetrics()
    backoff = settings.error_backoff_s
    resource = dict(group=GROUP, version=VERSION, plural=PLURAL, registry=registry)

    sweeper: dict[str, asyncio.Task] = {}

    async def sweep_forever(logger: Any) -> None:
        while True:
            await asyncio.sleep(interval)  # not at startup: a pass per interval, the first after one
            try:
                swept = await asyncio.to_thread(driver.sweep_orphans)
                if swept:
                    logger.warning("orphaned adapters of %d erased sessions deleted", len(swept))
            except Exception as err:  # noqa: BLE001 - a store that is down now may be up at the next pass
                logger.warning("the orphaned-adapter sweep failed (%s); retrying in %.0f s", err, interval)

    interval = settings.orphan_sweep_interval_s
    if interval > 0 and hasattr(driver, "sweep_orphans"):

        @kopf.on.startup(registry=registry, id="orphan-sweep")
        async def start_sweep(logger: Any, **_: Any) -> None:
            sweeper["task"] = asyncio.get_running_loop().create_task(sweep_forever(logger))

        @kopf.on.cleanup(registry=registry, id="orphan-sweep-stop")
        async def stop_sweep(**_: Any) -> None:
            task = sweeper.pop("task", None)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    @kopf.on.create(**resource, id="initial-status", backoff=backoff)
    def initial_status(status: Any, meta: Any, name: str, namespace: str, patch: kopf.Patch, **_: Any) -> None:
        if (status or {}).get("phase"):
            return  # the first tick came first: never overwrite a newer observation
        patch.status.update(st.initial_status(clock(), meta.get("generation")))
        metrics.status_patches.labels("created").inc()
        metrics.track((namespace, name), "WARMUP")

    # idle: none, since our own status patches would keep pushing the next tick away;
    # sharp: off, so a slow tick (a gRPC deadline) is followed by a full interval, not a burst.
    @kopf.on.timer(**resource, id="tick", interval=settings.tick_interval_s, sharp=False, backoff=backoff)
    def tick(
        spec: Any, status: Any, meta: Any, name: str, namespace: str, patch: kopf.Patch, memo: Any, **_: Any
    ) -> None:
        session_id = _session_id(spec, name)
        now = clock()
        current = dict(status or {})
        try:
            report = driver.tick(session_id, now)
        except Exception as err:  # kopf retries after the backoff. No TTL verdict without fresh activity:
            metrics.ticks_failed.inc()  # the status's lastActivity lags by up to the counters interval
            raise kopf.TemporaryError(f"tick of session {session_id!r} failed: {err}", delay=backoff) from err
        # the driver knows the last activity; for a closed or unknown session the status is all there is
        last_activity = report.get("lastActivity") if report is not None else st.parse_time(current.get("lastActivity"))
        expired = st.ttl_expired(
            spec.get("ttlSeconds"), last_activity, st.parse_time(meta.get("creationTimestamp")), now
        )
        # only once our finalizer is on: deleting before it would skip the cleanup (timers start with the object)
        if expired and FINALIZER in (meta.get("finalizers") or []):
            try:
                deleter(namespace).delete_named(name)
            except Exception as err:
                raise kopf.TemporaryError(f"TTL expiry of {name}: delete failed: {err}", delay=backoff) from err
            metrics.ttl_deletions.inc()
            return
        metrics.reconciles.inc()
        decision = st.decide(
            current,
            report,
            generation=meta.get("generation"),
            now=now,
            counters_written_at=getattr(memo, "counters_written_at", None),
            counters_interval_s=settings.counters_interval_s,
        )
        if decision.patch is not None:
            patch.status.update(decision.patch)
            metrics.status_patches.labels(decision.cause).inc()
        if decision.writes_counters:
            memo.counters_written_at = now
        metrics.track((namespace, name), (decision.patch or current).get("phase"))

    @kopf.on.delete(**resource, id="cleanup", backoff=backoff)
    def cleanup(spec: Any, name: str, namespace: str, logger: Any, **_: Any) -> None:
        session_id = spec.get("sessionId")
        if session_id:
            try:
                driver.forget(str(session_id))
            except Exception as err:
                metrics.cleanups.labels("failed").inc()
                raise kopf.TemporaryError(f"cleanup of session {session_id!r} failed: {err}", delay=backoff) from err
        metrics.cleanups.labels("done").inc()
        metrics.track((namespace, name), None)
        logger.info("session %r: adapters and transcript deleted", session_id)

    return metrics
