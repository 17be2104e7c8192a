"""Per-tenant and per-session limits of the Dialogue API, as pure bookkeeping.

The dialogue service asks before it does anything costly: may this tenant open a session, send a
turn, hold another turn slot; may this session grow. A refusal is a `Refusal` with the message
the client sees (the limit's setting and when to retry); the service turns it into
RESOURCE_EXHAUSTED. Time is passed in, so the rules are tested without waiting.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

from soma.config import QuotaSettings


class Refusal(Exception):
    """A limit was reached; the message names it and says when to retry; `limit` is its setting."""

    def __init__(self, message: str, limit: str):
        super().__init__(message)
        self.limit = limit


@dataclass
class TokenBucket:
    """`rate` tokens per second up to `burst`; `take` spends one or says how long until one is there."""

    rate: float
    burst: int
    tokens: float = field(default=-1.0)
    stamp: float = 0.0

    def take(self, now: float) -> float:
        """0 when a token was spent; else the seconds until the next one."""
        if self.tokens < 0:
            self.tokens, self.stamp = float(self.burst), now
        self.tokens = min(float(self.burst), self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate if self.rate > 0 else math.inf


def _tenant(tenant: str | None) -> str:
    return "(no key)" if tenant is None else tenant


class TenantQuotas:
    """The rate buckets and turn slots of every tenant on this replica, and the per-session checks."""

    MAX_TRACKED = 100_000  # tenants whose buckets are kept; the idlest are forgotten past it

    def __init__(self, settings: QuotaSettings):
        self.settings = settings
        self._lock = threading.Lock()
        self._open: dict[str | None, TokenBucket] = {}
        self._chat: dict[str | None, TokenBucket] = {}
        self._in_flight: dict[str | None, int] = {}

    def _rate(self, buckets: dict, tenant: str | None, rate: float, burst: int, what: str, key: str, now: float):
        if rate <= 0:
            return
        with self._lock:
            bucket = buckets.get(tenant)
            if bucket is None:
                if len(buckets) >= self.MAX_TRACKED:
                    buckets.pop(next(iter(buckets)))
                bucket = buckets[tenant] = TokenBucket(rate, burst)
            wait = bucket.take(now)
        if wait > 0:
            raise Refusal(
                f"tenant {_tenant(tenant)} sends {what} faster than {rate:g} per second (quotas.{key}); "
                f"retry in {max(wait, 0.01):.2f} s",
                key,
            )

    def check_open_rate(self, tenant: str | None, now: float) -> None:
        s = self.settings
        self._rate(self._open, tenant, s.open_rate_per_tenant, s.open_burst_per_tenant, "OpenSession calls",
                   "open_rate_per_tenant", now)  # fmt: skip

    def check_chat_rate(self, tenant: str | None, now: float) -> None:
        s = self.settings
        self._rate(self._chat, tenant, s.chat_rate_per_tenant, s.chat_burst_per_tenant, "Chat calls",
                   "chat_rate_per_tenant", now)  # fmt: skip

    def check_sessions(self, tenant: str | None, open_sessions: int) -> None:
        limit = self.settings.sessions_per_tenant
        if limit and open_sessions >= limit:
            raise Refusal(
                f"tenant {_tenant(tenant)} has {open_sessions} open sessions, the limit "
                f"(quotas.sessions_per_tenant) is {limit}; close a session (CloseSession) and retry",
                "sessions_per_tenant",
            )

    def check_session_size(self, session_id: str, turns: int, stored_bytes: int) -> None:
        """Whether one more turn may be stored on a session that has `turns` turns and `stored_bytes`."""
        s = self.settings
        if s.turns_per_session and turns >= s.turns_per_session:
            raise Refusal(
                f"session {session_id} has {turns} turns, the limit (quotas.turns_per_session) is "
                f"{s.turns_per_session}; open a new session to go on",
                "turns_per_session",
            )
        if s.history_bytes_per_session and stored_bytes >= s.history_bytes_per_session:
            raise Refusal(
                f"session {session_id} stores {stored_bytes} bytes of text, the limit "
                f"(quotas.history_bytes_per_session) is {s.history_bytes_per_session}; open a new session to go on",
                "history_bytes_per_session",
            )

    def take_turn_slot(self, tenant: str | None) -> None:
        """One of the tenant's turn slots on this replica; `release_turn_slot` gives it back."""
        limit = self.settings.turns_in_flight_per_tenant
        with self._lock:
            held = self._in_flight.get(tenant, 0)
            if limit and held >= limit:
                raise Refusal(
                    f"tenant {_tenant(tenant)} has {held} turns in flight on this replica, its share "
                    f"(quotas.turns_in_flight_per_tenant) is {limit}; retry when one has finished",
                    "turns_in_flight_per_tenant",
                )
            self._in_flight[tenant] = held + 1

    def release_turn_slot(self, tenant: str | None) -> None:
        with self._lock:
            held = self._in_flight.get(tenant, 0) - 1
            if held > 0:
                self._in_flight[tenant] = held
            else:
                self._in_flight.pop(tenant, None)

    def in_flight(self, tenant: str | None) -> int:
        with self._lock:
            return self._in_flight.get(tenant, 0)


def stored_bytes(system_prompt: str, turns) -> int:
    """UTF-8 bytes of a session's stored text (what quotas.history_bytes_per_session limits)."""
    return len(system_prompt.encode()) + sum(len(t.query.encode()) + len(t.answer.encode()) for t in turns)
