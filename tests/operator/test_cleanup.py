"""Deleting a SomaSession really deletes the session's data: the operator runs by KopfRunner
against kmock (an in-memory Kubernetes API emulator, not a real API server), and its driver
works on real stores: adapters in a real S3 server (moto, tests/servers.py), the transcript in
SQLite."""

from __future__ import annotations

import asyncio
import time

import kopf
import numpy as np
import pytest
from kubernetes import client
from safetensors.numpy import save

from soma.adaptation.driver import AdaptationDriver
from soma.k8s.session_resource import SessionResources, object_name
from soma.session.records import Phase, ServedBy, SessionState, Turn
from soma.storage.adapter_store import S3AdapterStore, build_manifest
from soma.storage.session_store import SessionClosed, SessionMissing, SqliteSessionStore
from soma_operator.handlers import kopf_settings, register
from soma_operator.settings import OperatorSettings
from tests.operator.conftest import NAMESPACE, RESOURCE, eventually, running_operator, session_object
from tests.servers import s3_server

SESSION = "Tenant.A_session-7"


class StoreDriver:
    """The AdaptationDriver's store side on real stores: tick reports what the session store
    holds, forget deletes the adapters and the transcript."""

    def __init__(self, sessions: SqliteSessionStore, adapters: S3AdapterStore):
        self.sessions, self.adapters = sessions, adapters
        self._orphan_candidates: set[str] = set()  # what the real driver's sweep keeps between passes

    def tick(self, session_id: str, now: float) -> dict | None:
        state = self.sessions.get(session_id)
        if state is None or state.closed:
            return None
        generation = state.adapter_generation
        return {
            "phase": state.phase.value,
            "generation": generation,
            "attempts": 0,
            "step": "idle",
            "job_id": None,
            "adapter_uri": self.adapters.uri(session_id, generation) if generation else None,
            "adapter_sha256": None,
            "last_reason": "",
            "counters": {
                "turns": state.turn_count,
                "teacherTurns": state.teacher_turns,
                "surrogateTurns": state.surrogate_turns,
                "switches": 0,
                "rollbacks": 0,
            },
            "lastActivity": state.updated_at,
        }

    def forget(self, session_id: str) -> None:
        self.adapters.delete_session(session_id)
        try:
            self.sessions.close(session_id)  # deletes the transcript
        except (SessionMissing, SessionClosed):
            pass

    def sweep_orphans(self) -> list[str]:
        """The real driver's sweep, on these stores."""
        return AdaptationDriver.sweep_orphans(self)

    @property
    def store(self) -> SqliteSessionStore:
        return self.sessions

    @property
    def adapter_store(self) -> S3AdapterStore:
        return self.adapters


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("s3")) as (endpoint, _):
        yield S3AdapterStore.connect(
            endpoint, "adapters", "testing-key", "testing-secret", secure=False, region="us-east-1", create_bucket=True
        )


def _put_adapter(store: S3AdapterStore, session_id: str, generation: int) -> None:
    weights = save({"base_model.lora_A.weight": np.zeros((2, 4), dtype=np.float32)})
    config = b'{"r": 2, "peft_type": "LORA"}'
    manifest = build_manifest(session_id, generation, weights, config, base_model="tiny", rank=2)
    store.put(manifest, weights, config)


def _turn(index: int) -> Turn:
    return Turn(index, f"q{index}", f"a{index}", ServedBy.TEACHER, "warm-up", Phase.WARMUP, 5, 5, 1.0, 1.0, "stop")


@pytest.mark.asyncio
async def test_deleting_the_object_deletes_adapters_and_transcript(k8s, s3, tmp_path):
    sessions = SqliteSessionStore(tmp_path / "sessions.db")
    now = time.time()
    sessions.create(SessionState(SESSION, now, now))
    for index in (1, 2, 3):
        sessions.append_turn(SESSION, _turn(index), Phase.WARMUP)
    for generation in (1, 2):
        _put_adapter(s3, SESSION, generation)
    sessions.create(SessionState("other-session", now, now))  # stored: the orphan sweep leaves it
    _put_adapter(s3, "other-session", 1)
    assert s3.generations(SESSION) == [1, 2]

    settings = OperatorSettings(standalone=True, tick_interval_s=0.2, error_backoff_s=0.2)
    config = client.Configuration()
    config.host = str(k8s.url).rstrip("/")
    api = client.CustomObjectsApi(client.ApiClient(config))
    registry = kopf.OperatorRegistry()
    register(registry, StoreDriver(sessions, s3), settings, deleter=lambda ns: SessionResources(ns, api=api))
    name = object_name(SESSION)
    k8s.objects[RESOURCE, NAMESPACE, name] = session_object(name, SESSION)

    async with running_operator(k8s, registry, kopf_settings(settings)):
        await eventually(
            lambda: k8s.objects[RESOURCE, NAMESPACE, name].get("status", {}).get("counters", {}).get("turns") == 3
        )
        assert await asyncio.to_thread(SessionResources(NAMESPACE, api=api).delete, SESSION)
        await eventually(lambda: k8s.objects[RESOURCE, NAMESPACE, name].deleted)

    assert s3.generations(SESSION) == []
    assert list(s3.client.list_objects(s3.bucket, prefix=f"{SESSION}/", recursive=True)) == []  # every file
    assert s3.generations("other-session") == [1]  # only this session's adapters
    assert sessions.turns(SESSION) == [] and sessions.get(SESSION).closed


@pytest.mark.asyncio
async def test_the_operator_sweeps_adapters_of_sessions_no_store_has(k8s, s3, tmp_path):
    """Issue 15: adapters in S3 whose session is in no session store (a crash mid-erasure) are
    deleted by the operator's sweep; a stored session's adapters stay."""
    sessions = SqliteSessionStore(tmp_path / "sessions.db")
    now = time.time()
    sessions.create(SessionState("kept-1", now, now))
    _put_adapter(s3, "kept-1", 1)
    _put_adapter(s3, "orphan-1", 1)
    _put_adapter(s3, "orphan-1", 2)
    assert {"kept-1", "orphan-1"} <= set(s3.session_ids())

    settings = OperatorSettings(standalone=True, tick_interval_s=0.2, error_backoff_s=0.2, orphan_sweep_interval_s=0.2)
    registry = kopf.OperatorRegistry()
    register(registry, StoreDriver(sessions, s3), settings, deleter=lambda ns: None)
    async with running_operator(k8s, registry, kopf_settings(settings)):
        await eventually(lambda: "orphan-1" not in s3.session_ids())
    assert list(s3.client.list_objects(s3.bucket, prefix="orphan-1/", recursive=True)) == []
    assert s3.generations("kept-1") == [1]
