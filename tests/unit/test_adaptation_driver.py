"""The adaptation driver over a real session store and scripted job and gate services: what it
submits, in which order, and how the session moves (the services themselves are tested in
tests/integration)."""

from __future__ import annotations

import time

import grpc
import pytest

from soma.adaptation.driver import AdaptationClients, AdaptationDriver
from soma.algo.config import preset
from soma.session import live as live_record
from soma.session import machine
from soma.session.job_token import job_token
from soma.session.live import LiveRecord
from soma.session.reconcile import ReconcilePolicy
from soma.session.records import Phase, ServedBy, SessionState, Turn
from soma.storage.session_store import SqliteSessionStore
from soma.v1 import common_pb2, gate_pb2, mining_pb2, training_pb2

SECRET = "5e" * 32
POLICY = ReconcilePolicy(machine.Policy(warm_turns=2, max_attempts=2), job_timeout_s=100.0, backoff_s=10.0)


class RpcError(grpc.RpcError):
    def __init__(self, code, details):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


class Jobs:
    """Mining or training service: submissions recorded, job states scripted by the test."""

    def __init__(self, kind):
        self.kind, self.submitted, self.state, self.fail_submit = kind, [], common_pb2.JOB_STATE_QUEUED, None
        self.fail_code = None
        self.forgotten = []

    def submit(self, request, timeout=None):
        if self.fail_submit:
            code = self.fail_code or grpc.StatusCode.UNAVAILABLE
            raise RpcError(code, self.fail_submit)
        self.submitted.append(request)
        return self._status(request.session_id, request.generation)

    def _status(self, sid, gen):
        return type("R", (), {"job": common_pb2.JobStatus(job_id=f"{self.kind}-{sid}-{gen}", state=self.state)})()

    SubmitMiningJob = SubmitTrainingJob = submit

    def ForgetSessionJobs(self, request, timeout=None):
        self.forgotten.append(request)
        return training_pb2.ForgetSessionJobsResponse(forgotten=2)

    def GetMiningJob(self, request, timeout=None):
        if self.state == "missing":
            raise RpcError(grpc.StatusCode.NOT_FOUND, "no such job")
        r = mining_pb2.GetMiningJobResponse(job=common_pb2.JobStatus(job_id=request.job_id, state=self.state))
        if self.state == common_pb2.JOB_STATE_SUCCEEDED:
            r.cases.append(mining_pb2.MinedCase(turn_index=0, verbalized_prompt="vp", teacher_answer="fa", hardness=2))
            r.warm_hardness.extend([1.0, 3.0])
        return r

    def GetTrainingJob(self, request, timeout=None):
        r = training_pb2.GetTrainingJobResponse(job=common_pb2.JobStatus(job_id=request.job_id, state=self.state))
        if self.state == common_pb2.JOB_STATE_SUCCEEDED:
            r.adapter.uri, r.adapter.sha256 = "file:///a/s/1", "0" * 64
            r.acceptance.append(gate_pb2.AcceptanceExample(teacher_answer="t", old_answer="o", new_answer="n"))
        return r


def _bag_of_words(texts):
    import torch

    vocab = sorted({w for t in texts for w in t.lower().split()})
    return torch.tensor([[float(w in t.lower().split()) for w in vocab] for t in texts]) + 1e-3


class Gate:
    """Accept scripted; Compress is the real GateService's (over a bag-of-words encoder)."""

    def __init__(self, accept=True):
        from soma.config import GateSettings
        from soma.gate.service import GateServicer

        self.accept, self.requests, self.compressed = accept, [], []
        self._real = GateServicer(type("E", (), {"encode": staticmethod(_bag_of_words)})(), GateSettings())

    def Compress(self, request, timeout=None):
        self.compressed.append(request)
        return self._real.Compress(request, None)

    def Accept(self, request, timeout=None):
        self.requests.append(request)
        return gate_pb2.AcceptResponse(accepted=self.accept, reason="scripted")


@pytest.fixture
def setup(tmp_path):
    store = SqliteSessionStore(tmp_path / "s.db")
    now = time.time()
    store.create(SessionState("s1", now, now, system_prompt="be brief"))
    for i in (1, 2):
        store.append_turn(
            "s1", Turn(i, f"q{i}", f"a{i}", ServedBy.TEACHER, "t", Phase.WARMUP, 1, 1, 1.0, 1.0, "stop"), None
        )
    record = LiveRecord(job_secret=SECRET)
    for i in (1, 2):
        record = live_record.after_turn(record, i, True, POLICY)
    store.put_live("s1", live_record.to_dict(record), 0, record.phase, record.generation)
    mining, training, gate = Jobs("mine"), Jobs("train"), Gate()
    driver = AdaptationDriver(store, AdaptationClients(mining, training, gate), preset("tiny"), POLICY)
    return store, driver, mining, training, gate


def _record(store) -> LiveRecord:
    return live_record.from_dict(store.get_live("s1")[0])


def test_the_chain_runs_mining_training_gate_and_switches(setup):
    store, driver, mining, training, gate = setup
    summary = driver.tick("s1", now=1000.0)
    assert summary["phase"] == "ADAPTING" and summary["step"] == "mining"
    [sub] = mining.submitted
    assert (sub.session_id, sub.generation) == ("s1", 1)
    # the turns by index: the mining service reads S_t and a_t^F from the session store itself
    assert [t.turn_index for t in sub.warm_turns] == [1, 2]
    assert not any(t.context or t.teacher_answer for t in sub.warm_turns)
    assert sub.generation_token == job_token(SECRET, "mine", "s1", 1)
    assert _record(store).warm_queries == ("q1", "q2")

    driver.tick("s1", now=1001.0)  # still queued: nothing new
    assert len(mining.submitted) == 1 and not training.submitted
    mining.state = common_pb2.JOB_STATE_SUCCEEDED
    summary = driver.tick("s1", now=1002.0)
    [train] = training.submitted
    assert summary["step"] == "training"
    # hand-off by job id: the cases stay in the job backend, the live record keeps ids and numbers
    assert train.mining_job_id == "mine-s1-1" and not train.mined_cases and not train.warm_hardness
    assert train.generation_token == job_token(SECRET, "train", "s1", 1) != sub.generation_token
    assert _record(store).live.mined == {"job_id": "mine-s1-1", "cases": 1}

    training.state = common_pb2.JOB_STATE_SUCCEEDED
    summary = driver.tick("s1", now=1003.0)
    [accept] = gate.requests
    assert [(e.teacher_answer, e.new_answer) for e in accept.batch] == [("t", "n")]  # read from the training job
    assert "acceptance" not in _record(store).live.trained and _record(store).live.trained["job_id"] == "train-s1-1"
    assert accept.current_query == "q2" and list(accept.warm_queries) == ["q1", "q2"]
    assert summary["phase"] == "SURROGATE" and summary["adapter_uri"] == "file:///a/s/1"
    assert summary["counters"]["switches"] == 1 and summary["counters"]["turns"] == 2
    assert store.get("s1").phase is Phase.SURROGATE and store.sessions_in([Phase.ADAPTING, Phase.GATING]) == []
    # the gate decided: the generation's job results are consumed, and the driver has them forgotten
    [forget] = training.forgotten
    assert (forget.session_id, forget.up_to_generation) == ("s1", 1)
    assert forget.generation_token == job_token(SECRET, "forget", "s1", 1)


def test_a_rejected_gate_retries_as_a_new_generation_after_the_backoff(setup):
    store, driver, mining, training, gate = setup
    gate.accept = False
    mining.state = training.state = common_pb2.JOB_STATE_SUCCEEDED
    driver.tick("s1", now=0.0)  # submit mining (it has already succeeded)
    driver.tick("s1", now=1.0)  # mining done: submit training
    summary = driver.tick("s1", now=2.0)  # training done: gate rejects
    assert (summary["phase"], summary["generation"], summary["attempts"]) == ("ADAPTING", 2, 1)
    driver.tick("s1", now=5.0)  # inside the backoff: nothing submitted
    assert [s.generation for s in mining.submitted] == [1]
    driver.tick("s1", now=13.0)
    assert [s.generation for s in mining.submitted] == [1, 2]


def test_an_unreachable_queue_costs_no_attempt_and_a_lost_job_does(setup):
    store, driver, mining, training, gate = setup
    mining.fail_submit = "connection refused"
    summary = driver.tick("s1", now=0.0)
    assert summary["step"] == "idle" and summary["attempts"] == 0 and not mining.submitted
    mining.fail_submit = None
    driver.tick("s1", now=20.0)
    assert len(mining.submitted) == 1
    mining.state = "missing"  # the job's record is gone (results expired, broker wiped)
    summary = driver.tick("s1", now=21.0)
    assert (summary["phase"], summary["attempts"], summary["generation"]) == ("ADAPTING", 1, 2)
    assert "missing" in summary["last_reason"]


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED]
)
def test_a_refusal_resubmitting_cannot_fix_costs_an_attempt_and_ends_failed(setup, code):
    """Issue 15: a permanent refusal is not retried forever; attempts run out (max_attempts 2 here)
    and the session is FAILED, the teacher serving it."""
    store, driver, mining, training, gate = setup
    mining.fail_submit, mining.fail_code = "warm_turns[0] is not a turn the teacher served", code
    summary = driver.tick("s1", now=0.0)
    assert (summary["phase"], summary["attempts"], summary["generation"]) == ("ADAPTING", 1, 2)
    assert code.name in summary["last_reason"] and "refused" in summary["last_reason"]
    summary = driver.tick("s1", now=5.0)  # within the backoff: nothing
    assert summary["attempts"] == 1
    summary = driver.tick("s1", now=100.0)
    assert (summary["phase"], summary["attempts"]) == ("FAILED", 2)
    assert driver.tick("s1", now=1000.0)["phase"] == "FAILED"  # for good: nothing is submitted again
    assert not mining.submitted


def test_training_refused_for_good_also_costs_an_attempt(setup):
    store, driver, mining, training, gate = setup
    driver.tick("s1", now=0.0)
    mining.state = common_pb2.JOB_STATE_SUCCEEDED
    training.fail_submit, training.fail_code = "mining job is FAILED", grpc.StatusCode.FAILED_PRECONDITION
    summary = driver.tick("s1", now=1.0)
    assert (summary["step"], summary["attempts"], summary["generation"]) == ("idle", 1, 2)


def test_a_closed_session_is_left_alone_and_forget_deletes_everything(setup, tmp_path):
    store, driver, mining, training, _ = setup
    store.close("s1")
    assert driver.tick("s1", now=0.0) is None and not mining.submitted

    class Adapters:
        deleted = []

        def delete_session(self, sid):
            self.deleted.append(sid)
            return 3

    driver.adapter_store = Adapters()
    driver.forget("s1")
    assert Adapters.deleted == ["s1"] and store.get("s1") is None
    [forget] = training.forgotten  # every generation's job records, signed while the record existed
    assert forget.up_to_generation == 0 and forget.generation_token == job_token(SECRET, "forget", "s1", 0)
    driver.forget("s1")  # erased already (the operator's finalizer after CloseSession): no token needed
    assert training.forgotten[-1].generation_token == ""


def test_training_gets_each_warm_turns_served_context_from_the_serving_compress(setup):
    """The adapter trains on S̃_t as a surrogate turn would be served it: the same Compress request."""
    from soma.dialogue.live_adaptation import LiveAdaptation

    store, _, mining, training, gate = setup
    method = preset("tiny").with_changes({"compression.recent_turns": 0})
    driver = AdaptationDriver(store, AdaptationClients(mining, training, gate), method, POLICY)
    driver.tick("s1", now=1000.0)
    mining.state = common_pb2.JOB_STATE_SUCCEEDED
    driver.tick("s1", now=1001.0)
    [train] = training.submitted
    second = train.warm_turns[1]
    assert second.turn_index == 2 and not second.context  # S_t is read from the store by the job service
    served = [(m.role, m.content) for m in second.served_context]
    assert served[0] == (common_pb2.ROLE_SYSTEM, "be brief") and served[1][1].startswith("[Summary")
    # serving the same turn asks the gate the very same request
    serving = LiveAdaptation(store, gate, method, POLICY)
    turns = store.turns("s1")
    plan = serving.plan_surrogate_turn("s1", _record(store), store.get("s1"), turns[:1], "q2")
    asked = gate_pb2.CompressRequest()
    asked.CopyFrom(gate.compressed[-1])
    assert asked.observe.query == "q2" and list(asked.observe.warm_queries) == ["q1", "q2"]  # one call, drift too
    asked.ClearField("observe")
    assert asked == gate.compressed[1]
    assert [m.content for m in plan.messages] == [m.content for m in second.served_context]
    assert plan.drift.check is not None and plan.drift.check.locality > 0


def test_training_on_the_full_history_asks_for_no_served_context(setup):
    store, _, mining, training, gate = setup
    method = preset("tiny").with_changes({"lora.context": "full"})
    driver = AdaptationDriver(store, AdaptationClients(mining, training, gate), method, POLICY)
    driver.tick("s1", now=1000.0)
    mining.state = common_pb2.JOB_STATE_SUCCEEDED
    driver.tick("s1", now=1001.0)
    [train] = training.submitted
    assert not gate.compressed and all(not t.served_context for t in train.warm_turns)


def test_a_surrogate_turn_computes_its_drift_check_once(setup, monkeypatch):
    """The plan's drift check is the one committed when nobody wrote the live record in between;
    after a write by the driver the turn's check is applied to the record as it is then."""
    from soma.dialogue.live_adaptation import LiveAdaptation
    from soma.session import machine as session_machine
    from soma.session.reconcile import LiveSession

    store, _, _, _, gate = setup
    switched = LiveRecord(
        live=LiveSession(adaptation=session_machine.Adaptation(phase=Phase.SURROGATE, generation=1)),
        warm_queries=("q1", "q2"),
    )
    _, version = store.get_live("s1")
    store.put_live("s1", live_record.to_dict(switched), version, switched.phase, switched.generation)
    calls = []
    real = live_record.drift_check
    monkeypatch.setattr(live_record, "drift_check", lambda *a, **k: calls.append(1) or real(*a, **k))
    serving = LiveAdaptation(store, gate, preset("tiny"), POLICY)
    plan = serving.plan_surrogate_turn("s1", _record(store), store.get("s1"), store.turns("s1"), "q3")
    after = serving.commit_turn("s1", 3, False, plan.drift)
    assert len(calls) == 1 and after.drift == plan.drift.checked.drift  # computed once, at plan time
    # a write in between: the commit checks the record as it is now
    plan = serving.plan_surrogate_turn("s1", _record(store), store.get("s1"), store.turns("s1"), "q4")
    raw, version = store.get_live("s1")
    store.put_live("s1", {**raw, "span_id": "moved"}, version, switched.phase, switched.generation)
    serving.commit_turn("s1", 4, False, plan.drift)
    assert len(calls) == 3 and _record(store).span_id == "moved"  # checked again, on the record as it was then


def test_a_record_without_a_signing_secret_gets_one_before_its_first_job(setup):
    """Records written before signed jobs: the first tick only mints the secret (the job service
    checks the token against the stored record, so it must be stored before a submission)."""
    store, driver, mining, _, _ = setup
    raw, version = store.get_live("s1")
    raw["job_secret"] = ""
    assert store.put_live("s1", raw, version, Phase.ADAPTING, 1)
    driver.tick("s1", now=1000.0)
    secret = _record(store).job_secret
    assert len(secret) == 64 and not mining.submitted
    driver.tick("s1", now=1001.0)
    [sub] = mining.submitted
    assert sub.generation_token == job_token(secret, "mine", "s1", 1)


def test_the_orphan_sweep_deletes_only_adapters_of_sessions_the_store_lacks(setup, tmp_path):
    """Issue 15: adapters left by a crash between an erasure and a job's own clean-up go; a live
    session's stay; a store that cannot be read deletes nothing."""
    import numpy as np
    from safetensors.numpy import save

    from soma.storage.adapter_store import LocalAdapterStore, build_manifest

    store, driver, *_ = setup
    adapters = LocalAdapterStore(tmp_path / "adapters")
    weights = save({"base_model.lora_A.weight": np.zeros((2, 4), dtype=np.float32)})
    config = b'{"r": 2, "peft_type": "LORA"}'
    for sid in ("s1", "gone-1", "gone-2"):
        adapters.put(build_manifest(sid, 1, weights, config, base_model="tiny", rank=2), weights, config)
    driver.adapter_store = adapters
    assert adapters.session_ids() == ["gone-1", "gone-2", "s1"]

    class Down:
        def get(self, sid):
            raise ConnectionError("store down")

    driver.store = Down()
    with pytest.raises(ConnectionError):
        driver.sweep_orphans()
    assert adapters.session_ids() == ["gone-1", "gone-2", "s1"]
    driver.store = store
    assert driver.sweep_orphans() == []  # seen missing once: a candidate, not yet deleted
    assert adapters.session_ids() == ["gone-1", "gone-2", "s1"]
    assert driver.sweep_orphans() == ["gone-1", "gone-2"]  # missing on two passes in a row
    assert adapters.session_ids() == ["s1"] and adapters.generations("s1") == [1]
    assert driver.sweep_orphans() == []

    # a store that holds no session at all (came back empty, or the wrong prefix) deletes nothing
    store.delete("s1")
    for _ in range(3):
        assert driver.sweep_orphans() == []
    assert adapters.session_ids() == ["s1"]
