"""The messages still waiting in a job queue, found and removed by task id.

Celery can revoke a task only in the workers' memory: the message itself, with the warm turns it
carries, stays in the broker until a worker takes it, and with the workers scaled to zero that is
never. Erasing a session therefore removes its waiting messages from the broker itself; and the
"queued too long" check asks whether a job the result backend still calls PENDING is waiting at
all, or was taken by a worker that died before starting it.

Both transports soma configures are read directly: Celery's filesystem transport (embedded mode:
one file per message in the queue folder) and Redis (a list per queue and priority). Any other
broker answers None ("cannot tell"), and the callers then do nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from celery import Celery


def _task_id(raw: bytes | str) -> str | None:
    try:
        return json.loads(raw)["headers"]["id"]
    except (ValueError, KeyError, TypeError):
        return None


def _folder(app: Celery) -> Path | None:
    if not str(app.conf.broker_url or "").startswith("filesystem"):
        return None
    folder = (app.conf.broker_transport_options or {}).get("data_folder_in")
    return Path(folder) if folder else None


def _queue_files(folder: Path, queue: str):
    """(path, task id) of the queue's message files; a file a worker takes meanwhile is skipped."""
    suffix = f"{queue}.msg"
    for name in sorted(os.listdir(folder)):
        if name.partition(".")[2] != suffix:
            continue
        path = folder / name
        try:
            raw = path.read_bytes()
        except OSError:
            continue
        yield path, _task_id(raw)


def _redis_lists(app: Celery, queue: str):
    """(redis client, list key) for each priority list of the queue."""
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        client = channel.client
        keys = {channel._q_for_pri(queue, p) for p in channel.priority_steps}
        for key in sorted(keys):
            yield client, key


def _is_redis(app: Celery) -> bool:
    return str(app.conf.broker_url or "").startswith(("redis://", "rediss://"))


def waiting_ids(app: Celery, queue: str) -> set[str] | None:
    """Task ids of the messages waiting in `queue` (on Redis also those a worker reserved and has not
    acknowledged); None when the broker is not one soma can read."""
    folder = _folder(app)
    if folder is not None:
        return {tid for _, tid in _queue_files(folder, queue) if tid}
    if _is_redis(app):
        ids = set()
        for client, key in _redis_lists(app, queue):
            ids.update(tid for tid in map(_task_id, client.lrange(key, 0, -1)) if tid)
        ids.update(_redis_reserved(app))  # kombu restores these itself after the visibility timeout
        return ids
    return None


def _redis_reserved(app: Celery) -> set[str]:
    """Task ids a worker has taken but not acknowledged (kombu's `unacked` hash, any queue)."""
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        ids = set()
        for raw in channel.client.hvals(channel.unacked_key):
            try:
                ids.add(json.loads(raw)[0]["headers"]["id"])
            except (ValueError, KeyError, TypeError, IndexError):
                continue
        return ids


def remove_waiting(app: Celery, queue: str, task_ids: set[str]) -> int | None:
    """Delete the waiting messages of these tasks from the broker; how many went (None: cannot tell).
    A message a worker takes meanwhile is the worker's: it drops the job of an erased session."""
    if not task_ids:
        return 0
    removed = 0
    folder = _folder(app)
    if folder is not None:
        for path, tid in _queue_files(folder, queue):
            if tid in task_ids:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
        return removed
    if _is_redis(app):
        for client, key in _redis_lists(app, queue):
            for raw in client.lrange(key, 0, -1):
                if _task_id(raw) in task_ids:
                    removed += client.lrem(key, 0, raw)
        return removed
    return None
