"""An LRU cache of session adapters on one surrogate replica, bounded by count and by bytes.

A miss fetches the adapter from the store (sha256-verified, safetensors only) *outside* the
lock, so a slow store never stalls requests for other sessions, then adds it to the model under
the lock; when the cache is over either bound the least recently used adapters are removed from
the model. A turn *pins* its adapter for as long as it streams (`pinned`): pinned adapters are
never evicted or dropped (the cache may stay over its bounds until they are released), and no
lock is held across a stream, so several sessions' turns run at once (vLLM batches them; PEFT's
model-wide active adapter still takes them one at a time, see SessionAdapters.using).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator
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
        self._pins: Counter[str] = Counter()  # name -> turns streaming with it now
        self._dropped: set[str] = set()  # dropped while pinned: deleted at the last release
        self.stats = CacheStats()

    name = staticmethod(adapter_name)

    @property
    def bytes(self) -> int:
        return sum(size for size, _ in self._entries.values())

    def __contains__(self, key: tuple[str, int]) -> bool:
        return adapter_name(*key) in self._entries

    def acquire(self, session_id: str, generation: int) -> str:
        """The adapter name for (session, generation), loading it on a miss (not pinned: see `pin`)."""
        return self._acquire(session_id, generation)[0]

    def _acquire(self, session_id: str, generation: int) -> tuple[str, bool]:
        name = adapter_name(session_id, generation)
        with self.lock:
            if name in self._entries:
                self._entries.move_to_end(name)
                self.stats.hits += 1
                return name, True
        t0 = time.perf_counter()
        stored = self.store.get(session_id, generation)  # NotFound / DataLoss / Unavailable, outside the lock
        if self.base_model and stored.manifest.base_model != self.base_model:
            raise FailedPrecondition(
                f"adapter {session_id}/{generation} was trained on {stored.manifest.base_model!r}; this surrogate "
                f"serves {self.base_model!r}"
            )
        with self.lock:
            hit = name in self._entries  # another request may have loaded it meanwhile
            if not hit:
                self.adapters.load(name, stored.weights, stored.config)
                self._entries[name] = (stored.size, session_id)
                self.stats.misses += 1
                self.stats.load_seconds += time.perf_counter() - t0
                self._evict(keep=name)
            else:
                self.stats.hits += 1
            self._entries.move_to_end(name)
            return name, hit

    def pin(self, session_id: str, generation: int) -> tuple[str, bool]:
        """Load (session, generation) if needed and pin it until `release`; (its name, a cache hit)."""
        while True:
            name, hit = self._acquire(session_id, generation)
            with self.lock:
                if name in self._entries and name not in self._dropped:  # not evicted since acquired
                    self._pins[name] += 1
                    return name, hit

    def release(self, name: str) -> None:
        """A turn is done with the adapter: the last release lets it be evicted (or dropped) again."""
        with self.lock:
            self._pins[name] -= 1
            if self._pins[name] > 0:
                return
            del self._pins[name]
            if name in self._dropped:
                self._dropped.discard(name)
                self._remove(name)
            else:
                self._evict(keep=None)  # the cache grew over its bounds while this was pinned: settle

    @contextlib.contextmanager
    def pinned(self, session_id: str, generation: int) -> Iterator[str]:
        name, _ = self.pin(session_id, generation)
        try:
            yield name
        finally:
            self.release(name)

    def pins(self, name: str) -> int:
        with self.lock:
            return self._pins.get(name, 0)

    def _remove(self, name: str) -> None:
        if self._entries.pop(name, None) is not None:
            self.adapters.delete(name)

    def _evict(self, keep: str | None) -> None:
        while len(self._entries) > self.max_count or (self.bytes > self.max_bytes and len(self._entries) > 1):
            victim = next((n for n in self._entries if n != keep and n not in self._pins), None)
            if victim is None:
                break  # everything else is in use: over the bounds until a turn releases its adapter
            self._remove(victim)
            self.stats.evictions += 1

    def drop_session(self, session_id: str) -> None:
        """Forget every cached generation of a session (after its rollback or deletion); one a turn
        is streaming with goes when that turn ends."""
        with self.lock:
            for name in [n for n, (_, s) in self._entries.items() if s == session_id]:
                if name in self._pins:
                    self._dropped.add(name)
                else:
                    self._remove(name)
