"""The job queue against the brokers soma configures, with no worker: Celery's filesystem transport
(embedded mode) and a real redis-server (Debian, a free loopback port) as broker and result backend.

Issue 15: forgetting a session's jobs removes their messages (and the warm-turn text they carry)
from the broker, not only from the workers' memory; a job a worker took and never started (the
message gone from the broker, its status still PENDING) is sent again after `requeue_after_s`.
"""

from __future__ import annotations

import json
import time

import prometheus_client
import pytest
import redis

from soma.config import JobsSettings
from soma.jobs import broker_messages
from soma.jobs.app import make_celery
from soma.jobs.queue import JobQueue
from tests.servers import redis_contents, redis_server

pytestmark = pytest.mark.integration

SECRET = "the warm turn only session q-1 ever said"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with redis_server(tmp_path_factory.mktemp("redis")) as (url, _):
        yield url


@pytest.fixture(params=["filesystem", "redis"])
def broker(request, tmp_path, redis_url):
    if request.param == "filesystem":
        settings = JobsSettings(local_dir=tmp_path / "jobs", requeue_after_s=30)
    else:
        redis.Redis.from_url(redis_url).flushall()
        settings = JobsSettings(broker_url=redis_url, result_backend=redis_url, requeue_after_s=30)
    app = make_celery(settings)
    clock = Clock()
    started = time.time()
    queue = JobQueue(app, settings, clock=clock, wall=lambda: started + clock.now - 1000.0)
    yield request.param, queue, clock, tmp_path, redis_url
    app.close()


def _everything(kind: str, tmp_path, redis_url) -> bytes:
    """Every byte the broker and result backend hold: all files, or every Redis key and value."""
    if kind == "filesystem":
        return b"".join(p.read_bytes() for p in (tmp_path / "jobs").rglob("*") if p.is_file())
    return b"".join(redis_contents(redis_url))


def _take(kind: str, queue: JobQueue, jid: str, redis_url: str) -> None:
    """What a worker's consumer does when it reserves the message: it leaves the queue."""
    name = queue.settings.mining_queue
    assert broker_messages.remove_waiting(queue.app, name, {jid}) == 1
    assert jid not in broker_messages.waiting_ids(queue.app, name)


def test_forgetting_a_session_removes_its_waiting_messages_and_their_text(broker):
    kind, queue, _, tmp_path, redis_url = broker
    warm = [{"turn_index": 1, "query": SECRET}]
    queue.submit("mine", "q-1", 1, [warm])
    queue.submit("train", "q-1", 1, [warm, [0.5], []])
    queue.submit("mine", "q-other", 1, [[{"turn_index": 1, "query": "another session"}]])
    assert SECRET.encode() in _everything(kind, tmp_path, redis_url)
    assert broker_messages.waiting_ids(queue.app, queue.settings.mining_queue) == {"mine-q-1-1", "mine-q-other-1"}

    assert queue.forget_session("q-1") == 2
    assert broker_messages.waiting_ids(queue.app, queue.settings.mining_queue) == {"mine-q-other-1"}
    assert broker_messages.waiting_ids(queue.app, queue.settings.training_queue) == set()
    held = _everything(kind, tmp_path, redis_url)
    assert SECRET.encode() not in held and b"q-1-1" not in held
    assert b"another session" in held  # the other session's job is untouched


def test_a_job_taken_but_never_started_is_sent_again_and_a_waiting_one_is_not(broker):
    kind, queue, clock, _, redis_url = broker
    queue.submit("mine", "q-2", 1, [[{"turn_index": 1, "query": "hello"}]])
    queue.submit("mine", "q-3", 1, [[{"turn_index": 1, "query": "hello"}]])
    name = queue.settings.mining_queue
    _take(kind, queue, "mine-q-2-1", redis_url)  # a worker reserved it, then died before starting it

    assert queue.status("mine-q-2-1", "mine").stage == "queued"  # too young to be called lost: no broker read
    clock.now += 31
    assert queue.status("mine-q-2-1", "mine").stage == "queued"  # old enough: first seen missing now
    clock.now += 29
    assert queue.status("mine-q-2-1", "mine").stage == "queued"
    clock.now += 2  # missing for 31 s > requeue_after_s
    before = prometheus_client.REGISTRY.get_sample_value("soma_jobs_requeued_total", {"queue": name}) or 0.0
    view = queue.status("mine-q-2-1", "mine")
    assert (view.state, view.stage) == ("QUEUED", "queued again: its worker never started it")
    assert "mine-q-2-1" in broker_messages.waiting_ids(queue.app, name)
    assert queue.requeued == 1
    assert prometheus_client.REGISTRY.get_sample_value("soma_jobs_requeued_total", {"queue": name}) == before + 1
    clock.now += 100
    assert queue.status("mine-q-2-1", "mine").stage == "queued"  # waiting again: no second copy
    assert queue.status("mine-q-3-1", "mine").stage == "queued"  # waited all along
    clock.now += 100
    assert queue.status("mine-q-3-1", "mine").stage == "queued" and queue.requeued == 1
    waiting = [j for j in broker_messages.waiting_ids(queue.app, name)]
    assert sorted(waiting) == ["mine-q-2-1", "mine-q-3-1"]


def test_requeue_off_leaves_a_lost_job_alone(broker):
    kind, queue, clock, _, redis_url = broker
    queue.settings = queue.settings.model_copy(update={"requeue_after_s": 0})
    queue.submit("mine", "q-4", 1, [[{"turn_index": 1, "query": "hello"}]])
    _take(kind, queue, "mine-q-4-1", redis_url)
    queue.status("mine-q-4-1", "mine")
    clock.now += 1000
    assert queue.status("mine-q-4-1", "mine").stage == "queued" and queue.requeued == 0


def test_a_job_a_redis_worker_has_reserved_is_not_sent_again(broker):
    """On Redis a worker's reserved message sits in kombu's `unacked` hash, and kombu restores it
    itself after the visibility timeout: sending a copy would run the job twice."""
    kind, queue, clock, _, redis_url = broker
    if kind != "redis":
        pytest.skip("the filesystem transport has no reservations to see")
    queue.submit("mine", "q-5", 1, [[{"turn_index": 1, "query": "hello"}]])
    name = queue.settings.mining_queue
    r = redis.Redis.from_url(redis_url)
    raw = r.rpop(name)  # what a consumer does on Redis: the message moves to unacked
    with queue.app.connection_for_write() as conn:
        unacked = conn.default_channel.unacked_key
    r.hset(unacked, "tag-1", json.dumps([json.loads(raw), "", name]))
    queue.status("mine-q-5-1", "mine")
    clock.now += 1000
    assert queue.status("mine-q-5-1", "mine").stage == "queued" and queue.requeued == 0
