"""An LRU cache of session adapters on one surrogate replica, bounded by count and by bytes.

A miss fetches the adapter from the store (sha256-verified, safetensors only) *outside* the
lock, so a slow store never stalls requests for other sessions, then adds it to the PEFT model
under the lock; when the cache is over either bound the least recently used adapters are
removed from the model. The caller holds `lock` while it selects an adapter and generates with
it, so an adapter is never evicted under a running generation.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from soma.adapter_identity import Adapters, adapter_name
from soma.errors import FailedPrecondition
from soma.storage.adapter_store import AdapterStore


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    load_seconds: float = 0.0


class AdapterCache:
    def __init__(
        self, adapters: Adapters, store: AdapterStore, *, max_count: int, max_bytes: int, base_model: str = ""
    ):
        if max_count < 1 or max_bytes < 1:
            raise ValueError("the adapter cache needs max_count ≥ 1 and max_bytes ≥ 1")
        self.adapters = adapters
        self.store = store
        self.base_model = base_model
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.lock = threading.RLock()
        self._entries: OrderedDict[str, tuple[int, str]] = OrderedDict()  # name -> (bytes, session), oldest first
        self.stats = CacheStats()

    name = staticmethod(adapter_name)

    @property
    def bytes(self) -> int:
        return sum(size for size, _ in self._entries.values())

    def __contains__(self, key: tuple[str, int]) -> bool:
        return adapter_name(*key) in self._entries

    def acquire(self, session_id: str, generation: int) -> str:
        """The PEFT adapter name for (session, generation), loading it on a miss."""
        name = adapter_name(session_id, generation)
        with self.lock:
            if name in self._entries:
                self._entries.move_to_end(name)
                self.stats.hits += 1
                return name
        t0 = time.perf_counter()
        stored = self.store.get(session_id, generation)  # NotFound / DataLoss / Unavailable, outside the lock
        if self.base_model and stored.manifest.base_model != self.base_model:
            raise FailedPrecondition(
                f"adapter {session_id}/{generation} was trained on {stored.manifest.base_model!r}; this surrogate "
                f"serves {self.base_model!r}"
            )
        with self.lock:
            if name not in self._entries:  # another request may have loaded it meanwhile
                self.adapters.load(name, stored.weights, stored.config)
                self._entries[name] = (stored.size, session_id)
                self.stats.misses += 1
                self.stats.load_seconds += time.perf_counter() - t0
                self._evict(keep=name)
            else:
                self.stats.hits += 1
            self._entries.move_to_end(name)
            return name

    def _evict(self, keep: str) -> None:
        while len(self._entries) > self.max_count or (self.bytes > self.max_bytes and len(self._entries) > 1):
            oldest = next(iter(self._entries))
            if oldest == keep:
                break
            self._entries.pop(oldest)
            self.adapters.delete(oldest)
            self.stats.evictions += 1

    def drop_session(self, session_id: str) -> None:
        """Forget every cached generation of a session (after its rollback or deletion)."""
        with self.lock:
            for name in [n for n, (_, s) in self._entries.items() if s == session_id]:
                self._entries.pop(name)
                self.adapters.delete(name)
