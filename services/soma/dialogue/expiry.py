"""The idle TTL outside the operator: a background thread that erases sessions nobody has used for
`dialogue.session_ttl_s` (in a cluster the operator does it through each SomaSession's ttlSeconds),
and on the same pass sweeps the adapter store for adapters of sessions that no longer exist."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from soma.storage.session_store import SessionStore

log = logging.getLogger("soma.dialogue")


class IdleExpiry:
    """Every `every_s`, erase the sessions idle longer than `ttl_s`: `forget(session_id)` removes what
    lives outside the store (adapters), then the store's record goes; then `sweep()` (when given)
    removes orphaned adapters."""

    def __init__(
        self,
        store: SessionStore,
        ttl_s: float,
        forget: Callable[[str], None] = lambda _sid: None,
        every_s: float | None = None,
        clock: Callable[[], float] = time.time,
        sweep: Callable[[], list[str]] | None = None,
    ):
        self.store, self.ttl_s, self.forget, self.clock, self.sweep_orphans = store, ttl_s, forget, clock, sweep
        self.every_s = every_s if every_s is not None else min(300.0, max(1.0, ttl_s / 10))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soma-idle-expiry", daemon=True)

    def sweep(self) -> list[str]:
        """One pass; the ids it erased."""
        erased = []
        for session_id in self.store.idle_sessions(self.clock() - self.ttl_s):
            try:
                self.forget(session_id)
                self.store.delete(session_id)
            except Exception:  # noqa: BLE001 - the next pass tries again
                log.exception("session %s: erasing it after its idle TTL failed", session_id)
                continue
            erased.append(session_id)
        if erased:
            log.info("erased %d sessions idle longer than %.0f s", len(erased), self.ttl_s)
        if self.sweep_orphans is not None:
            try:
                self.sweep_orphans()
            except Exception:  # noqa: BLE001 - the next pass tries again
                log.exception("the orphaned-adapter sweep failed; retrying on the next pass")
        return erased

    def start(self) -> IdleExpiry:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.sweep()
            except Exception:  # noqa: BLE001 - a store that is down now may be up at the next pass
                log.exception("idle expiry pass failed; retrying in %.0f s", self.every_s)
