"""The operator restarted in the middle of a session's adaptation: the second operator (a new
process would have a new driver and kopf memory; here a new registry and driver) picks the chain
up where the session store says it stands, submits nothing twice and switches the session.

The operator runs by KopfRunner against kmock (an in-memory Kubernetes API emulator, not a real
API server); the driver is the real AdaptationDriver on a real SQLite session store; the job and
gate services are the scripted ones of tests/unit/test_adaptation_driver.py."""

from __future__ import annotations

import time

import kopf
import pytest

from soma.adaptation.driver import AdaptationClients, AdaptationDriver
from soma.algo.config import preset
from soma.k8s.session_resource import object_name
from soma.session import live as live_record
from soma.session.live import LiveRecord
from soma.session.records import Phase, ServedBy, SessionState, Turn
from soma.storage.session_store import SqliteSessionStore
from soma.v1 import common_pb2
from soma_operator.handlers import kopf_settings, register
from soma_operator.settings import OperatorSettings
from tests.operator.conftest import NAMESPACE, RESOURCE, eventually, running_operator, session_object
from tests.unit.test_adaptation_driver import POLICY, SECRET, Gate, Jobs

SESSION = "restart-1"


def _adapting_session(store: SqliteSessionStore) -> None:
    now = time.time()
    store.create(SessionState(SESSION, now, now))
    record = LiveRecord(job_secret=SECRET)
    for i in (1, 2):
        turn = Turn(i, f"q{i}", f"a{i}", ServedBy.TEACHER, "t", Phase.WARMUP, 1, 1, 1.0, 1.0, "stop")
        store.append_turn(SESSION, turn, None)
        record = live_record.after_turn(record, i, True, POLICY)
    store.put_live(SESSION, live_record.to_dict(record), 0, record.phase, record.generation)


def _operator(store, mining, training, gate):
    registry = kopf.OperatorRegistry()
    driver = AdaptationDriver(store, AdaptationClients(mining, training, gate), preset("tiny"), POLICY)
    settings = OperatorSettings(standalone=True, tick_interval_s=0.2, error_backoff_s=0.2, orphan_sweep_interval_s=0)
    register(registry, driver, settings, deleter=lambda ns: None)
    return registry, kopf_settings(settings)


@pytest.mark.asyncio
async def test_an_operator_restarted_mid_adaptation_finishes_the_chain_without_repeating_it(k8s, tmp_path):
    store = SqliteSessionStore(tmp_path / "sessions.db")
    _adapting_session(store)
    mining, training, gate = Jobs("mine"), Jobs("train"), Gate()
    name = object_name(SESSION)
    k8s.objects[RESOURCE, NAMESPACE, name] = session_object(name, SESSION)

    registry, settings = _operator(store, mining, training, gate)
    async with running_operator(k8s, registry, settings):
        await eventually(lambda: len(mining.submitted) == 1)
        await eventually(lambda: k8s.objects[RESOURCE, NAMESPACE, name].get("status", {}).get("step") == "mining")
    # the first operator is gone; its mining job finishes meanwhile
    mining.state = common_pb2.JOB_STATE_SUCCEEDED

    registry, settings = _operator(store, mining, training, gate)
    async with running_operator(k8s, registry, settings):
        await eventually(lambda: len(training.submitted) == 1)
        training.state = common_pb2.JOB_STATE_SUCCEEDED
        await eventually(lambda: store.get(SESSION).phase is Phase.SURROGATE)
        await eventually(lambda: k8s.objects[RESOURCE, NAMESPACE, name].get("status", {}).get("phase") == "SURROGATE")
    assert len(mining.submitted) == 1 and len(training.submitted) == 1 and len(gate.requests) == 1
    assert training.submitted[0].mining_job_id == f"mine-{SESSION}-1"
    assert store.get(SESSION).turn_count == 2  # no turn lost
