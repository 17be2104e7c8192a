"""The Dialogue API's quotas as pure bookkeeping (soma.dialogue.quotas): each refused at its
boundary, with a message naming the setting and when to retry; tenants counted apart."""

from __future__ import annotations

import pytest

from soma.config import QuotaSettings
from soma.dialogue.quotas import Refusal, TenantQuotas, TokenBucket, stored_bytes
from soma.session.records import Phase, ServedBy, Turn


def test_a_token_bucket_allows_its_burst_then_its_rate():
    bucket = TokenBucket(rate=2.0, burst=3)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)  # the next token in 1/rate s
    assert bucket.take(0.5) == 0.0
    assert bucket.take(0.5) > 0
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]  # refilled to the burst, not beyond
    assert bucket.take(100.0) > 0


def test_rates_are_per_tenant_and_say_when_to_retry():
    q = TenantQuotas(QuotaSettings(chat_rate_per_tenant=1.0, chat_burst_per_tenant=2))
    q.check_chat_rate("acme", 0.0)
    q.check_chat_rate("acme", 0.0)
    with pytest.raises(Refusal, match=r"quotas.chat_rate_per_tenant.*retry in 1.00 s") as info:
        q.check_chat_rate("acme", 0.0)
    assert info.value.limit == "chat_rate_per_tenant"
    q.check_chat_rate("beta", 0.0)  # another tenant's bucket is its own
    q.check_chat_rate("acme", 1.0)
    unlimited = TenantQuotas(QuotaSettings(open_rate_per_tenant=0))
    for _ in range(1000):
        unlimited.check_open_rate("acme", 0.0)


def test_sessions_per_tenant_at_the_boundary():
    q = TenantQuotas(QuotaSettings(sessions_per_tenant=2))
    q.check_sessions("acme", 1)
    with pytest.raises(Refusal, match=r"2 open sessions.*quotas.sessions_per_tenant.*CloseSession"):
        q.check_sessions("acme", 2)
    TenantQuotas(QuotaSettings(sessions_per_tenant=0)).check_sessions("acme", 10**6)


def test_a_session_may_not_grow_past_its_turns_or_bytes():
    q = TenantQuotas(QuotaSettings(turns_per_session=3, history_bytes_per_session=20))
    q.check_session_size("s", 2, 19)
    with pytest.raises(Refusal, match=r"3 turns.*quotas.turns_per_session.*open a new session"):
        q.check_session_size("s", 3, 0)
    with pytest.raises(Refusal, match=r"20 bytes.*quotas.history_bytes_per_session"):
        q.check_session_size("s", 0, 20)
    turns = [Turn(1, "héllo", "wörld", ServedBy.TEACHER, "", Phase.WARMUP, 1, 1, 1.0, 1.0, "stop")]
    assert stored_bytes("sys", turns) == 3 + 6 + 6  # UTF-8 bytes, not characters


def test_turns_in_flight_are_a_fair_share_per_tenant():
    q = TenantQuotas(QuotaSettings(turns_in_flight_per_tenant=2))
    q.take_turn_slot("flood")
    q.take_turn_slot("flood")
    with pytest.raises(Refusal, match=r"2 turns in flight.*quotas.turns_in_flight_per_tenant"):
        q.take_turn_slot("flood")
    q.take_turn_slot("quiet")  # the other tenant still gets a slot
    q.release_turn_slot("flood")
    q.take_turn_slot("flood")
    assert (q.in_flight("flood"), q.in_flight("quiet")) == (2, 1)
    for _ in range(2):
        q.release_turn_slot("flood")
    assert q.in_flight("flood") == 0
