"""Embedded mode's reconcile loop: one background thread that ticks the adaptation driver for every
session whose adaptation is under way (the operator does this in cluster mode)."""

from __future__ import annotations

import logging
import threading

from soma.adaptation.driver import AdaptationDriver
from soma.storage.session_store import ACTIVE_PHASES, SessionStore

log = logging.getLogger("soma.adaptation")


class ReconcileLoop:
    """Embedded mode's stand-in for the operator: ticks every session whose adaptation is under
    way, every `interval_s` or at once when a turn starts an adaptation."""

    def __init__(self, driver: AdaptationDriver, store: SessionStore, interval_s: float):
        self.driver = driver
        self.store = store
        self.interval_s = interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soma-reconcile", daemon=True)

    def start(self) -> ReconcileLoop:
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for session_id in self.store.sessions_in(ACTIVE_PHASES):
                    if self._stop.is_set():
                        return
                    self.driver.tick(session_id)
            except Exception:  # noqa: BLE001 - the loop must outlive a bad tick; the next one retries
                log.exception("reconcile loop: tick failed; retrying in %.1f s", self.interval_s)
            self._wake.wait(self.interval_s)
            self._wake.clear()
