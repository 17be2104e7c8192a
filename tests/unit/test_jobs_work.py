"""What mining and training jobs do, without a broker: tiny random G, a recording teacher, a local store."""

from __future__ import annotations

import pytest

from soma.algo import config, lm, neighbourhood
from soma.algo.adaptation import Surrogate
from soma.algo.lora_train import SessionAdapters
from soma.algo.teacher_client import Completion
from soma.jobs import work
from soma.models.chat_backend import TransformersChatBackend
from soma.models.testing import build_tiny_chat_model
from soma.storage.adapter_store import LocalAdapterStore
from soma.storage.session_store import SqliteSessionStore
from tests.recorders import record_gate_lengths
from tests.sessions import adapting_session

WARM = [
    {
        "turn_index": 0,
        "context": [{"role": "user", "content": "hello world python code"}],
        "teacher_answer": "the answer is code",
        "finished": True,
    },
    {
        "turn_index": 1,
        "context": [
            {"role": "user", "content": "hello world python code"},
            {"role": "assistant", "content": "the answer is code"},
            {"role": "user", "content": "print a list"},
        ],
        "teacher_answer": "print the list value",
        "finished": False,
    },
    {
        "turn_index": 2,
        "context": [{"role": "user", "content": "what is a dict"}],
        "teacher_answer": "a dict maps keys to values",
        "finished": True,
    },
]


class Teacher:
    def __init__(self):
        self.seen = []

    def complete(self, conversations, max_new_tokens):
        self.seen += conversations
        return [Completion(f"reply to {c[-1]['content'][:10]}", 4, 3, "stop") for c in conversations]


@pytest.fixture(scope="module")
def resources(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    path = build_tiny_chat_model(root / "chat")
    backend = TransformersChatBackend(str(path), name="tiny")
    cfg = config.preset("tiny").with_changes({"lora.steps": 3, "gate.acceptance_size": 1})
    table = neighbourhood.nearest_neighbours(lm.input_embeddings(backend.model), cfg.mining.neighbours)
    surrogate = Surrogate(backend, SessionAdapters(backend.model, cfg.lora), table)
    return work.JobResources(surrogate, "tiny", Teacher(), LocalAdapterStore(root / "adapters"), cfg)


def test_mining_job_returns_cases_and_warm_hardness(resources):
    events = []
    out = work.run_mining(resources, "sess-1", 1, WARM, lambda f, s: events.append((f, s)))
    assert len(out["warm_hardness"]) == 3 and all(h > 0 for h in out["warm_hardness"])
    assert out["cases"] and out["teacher_calls"] == len(out["cases"])
    for case in out["cases"]:
        assert case["teacher_answer"].startswith("reply to ")
        assert case["verbalized_prompt"] in out["verbalizations"]
    assert events[0] == (0.0, "mining") and events[-1] == (1.0, "mined")
    assert any("mining step" in s for _, s in events)


def test_training_job_stores_a_verified_adapter_and_answers_the_held_out_batch(resources):
    mined = work.run_mining(resources, "sess-2", 1, WARM, lambda f, s: None)
    out = work.run_training(resources, "sess-2", 1, WARM, mined["warm_hardness"], mined["cases"], lambda f, s: None)
    stored = resources.store.get("sess-2", 1)  # raises if the sha256 does not match
    assert stored.manifest.files["adapter_model.safetensors"]["sha256"] == out["sha256"]
    assert stored.manifest.base_model == "tiny" and out["uri"].endswith("sess-2/1")
    turn = lambda key: int(key.rsplit(":", 1)[1])  # noqa: E731
    assert not {turn(k) for k in out["acceptance_keys"]} & {turn(k) for k in out["training_keys"]}
    assert len(out["acceptance"]) == len(out["acceptance_keys"]) >= 1
    assert set(out["acceptance"][0]) == {"teacher_answer", "old_answer", "new_answer"}
    assert resources.surrogate.adapters.names == set()  # the job's adapter left the worker's model
    again = work.run_training(resources, "sess-2", 1, WARM, mined["warm_hardness"], mined["cases"], lambda f, s: None)
    assert again["sha256"] == out["sha256"]  # a redelivered job repeats the same work


def test_a_worker_without_a_teacher_mines_when_no_mined_pair_is_asked_for(resources):
    """`mining.mined_pairs = 0` (the cpu default) asks F nothing, so a worker with no
    `jobs.teacher_address` still scores hardness; asking for mined pairs there fails with the fix."""
    import dataclasses

    no_teacher = dataclasses.replace(resources, teacher=None, cfg=resources.cfg.with_changes({"mining.mined_pairs": 0}))
    out = work.run_mining(no_teacher, "sess-nt", 1, WARM, lambda f, s: None)
    assert len(out["warm_hardness"]) == 3 and out["cases"] == [] and out["teacher_calls"] == 0
    wanting = dataclasses.replace(resources, teacher=None)
    assert wanting.cfg.mining.mined_pairs > 0
    with pytest.raises(ValueError, match="jobs.teacher_address, or mining.mined_pairs=0"):
        work.run_mining(wanting, "sess-nt", 1, WARM, lambda f, s: None)


@pytest.mark.parametrize(
    ("rule", "serve_tokens", "expected"), [("teacher", 256, 16), ("teacher", 12, 12), ("served", 40, 40)]
)
def test_the_training_job_gates_at_the_length_its_rule_gives(resources, monkeypatch, rule, serve_tokens, expected):
    """The gate's answers are asked of G at `gate_answer_tokens`: F's longest acceptance answer here
    (a few words, so the floor of 16) under the default rule, never above the served length, and
    the served length under `served`."""
    import dataclasses

    asked = record_gate_lengths(resources.surrogate, monkeypatch)
    cfg = resources.cfg.with_changes({"gate.answer_tokens": 0, "gate.answer_length": rule})
    res = dataclasses.replace(resources, cfg=cfg, serve_tokens=serve_tokens)
    session = f"sess-len-{rule}-{serve_tokens}"
    mined = work.run_mining(res, session, 1, WARM, lambda f, s: None)
    work.run_training(res, session, 1, WARM, mined["warm_hardness"], mined["cases"], lambda f, s: None)
    assert asked == [expected]


def test_the_training_job_gates_as_long_as_fs_longest_acceptance_answer(resources, monkeypatch):
    """Between the floor and the served length the default rule asks G for exactly as many tokens as
    F's longest acceptance answer has in G's tokens (the cases above only reach the floor or the cap)."""
    import dataclasses

    long_warm = [{**turn, "teacher_answer": " ".join(["the answer is code"] * (6 + i))} for i, turn in enumerate(WARM)]
    asked = record_gate_lengths(resources.surrogate, monkeypatch)
    cfg = resources.cfg.with_changes({"gate.answer_tokens": 0, "gate.answer_length": "teacher"})
    res = dataclasses.replace(resources, cfg=cfg, serve_tokens=256)
    session = "sess-len-between"
    mined = work.run_mining(res, session, 1, long_warm, lambda f, s: None)
    out = work.run_training(res, session, 1, long_warm, mined["warm_hardness"], mined["cases"], lambda f, s: None)
    longest = max(len(lm.text_ids(resources.surrogate.tokenizer, a["teacher_answer"])) for a in out["acceptance"])
    assert 16 < longest < 256
    assert asked == [longest]


def test_bad_job_input_is_refused(resources):
    with pytest.raises(ValueError, match="at least one warm-start turn"):
        work.run_mining(resources, "s", 1, [], lambda f, s: None)
    with pytest.raises(ValueError, match="warm_hardness has 1 values for 3"):
        work.run_training(resources, "s", 1, WARM, [1.0], [], lambda f, s: None)
    bad_case = [{"turn_index": 9, "verbalized_prompt": "v", "teacher_answer": "a", "hardness": 1.0}]
    with pytest.raises(ValueError, match="names warm turn 9"):
        work.run_training(resources, "s", 1, WARM, [], bad_case, lambda f, s: None)


def test_a_refused_submission_leaves_no_marker(tmp_path):
    from soma.config import JobsSettings
    from soma.errors import Unavailable
    from soma.jobs.app import make_celery
    from soma.jobs.queue import JobQueue
    from tests.servers import free_port

    settings = JobsSettings(broker_url=f"redis://127.0.0.1:{free_port()}/0", local_dir=tmp_path)
    app = make_celery(settings)  # file result backend, unreachable Redis broker
    app.conf.task_publish_retry = False
    app.conf.broker_connection_timeout = 1
    queue = JobQueue(app, settings)
    with pytest.raises(Unavailable, match="job queue is unreachable"):
        queue.submit("mine", "sess-x", 1, [WARM])
    from soma.errors import NotFound

    with pytest.raises(NotFound):
        queue.status("mine-sess-x-1")  # nothing was enqueued, so nothing claims to be queued


def test_job_spans_join_the_submitters_trace(resources, spans, tmp_path):
    from opentelemetry import propagate, trace

    from soma.config import Settings
    from soma.jobs.app import MINE_TASK, make_celery
    from soma.jobs.tasks import register_tasks

    settings = Settings(state_dir=tmp_path)
    app = make_celery(settings.jobs)
    register_tasks(app, settings, resources_factory=lambda _settings: resources)
    adapting_session(SqliteSessionStore(settings.dialogue.session_db), "sess-t")
    with trace.get_tracer("test").start_as_current_span("OpenSession") as parent:
        headers: dict[str, str] = {}
        propagate.inject(headers)  # what JobQueue.submit puts in the Celery message
    result = app.tasks[MINE_TASK].apply(args=["sess-t", 1, WARM], headers=headers, task_id="mine-sess-t-1")
    assert result.successful(), result.traceback
    job = next(s for s in spans.get_finished_spans() if s.name == "soma.job.mine")
    assert job.context.trace_id == parent.get_span_context().trace_id
    assert job.parent.span_id == parent.get_span_context().span_id
    assert job.attributes["gen_ai.conversation.id"] == "sess-t" and job.attributes["soma.adapter.generation"] == 1
    assert any(e.name == "progress" and "mining step" in e.attributes["soma.stage"] for e in job.events)


def test_a_training_job_that_fails_after_storing_removes_its_adapter(resources):
    """A generation is complete with a successful job, or absent: the job fails after the write
    (here the read-back of what it stored), and the written generation goes with it."""
    from soma.errors import Unavailable

    class FailingReadBack:
        def __init__(self, inner):
            self.inner, self.wrote = inner, False

        def put(self, manifest, weights, config):
            self.wrote = True
            return self.inner.put(manifest, weights, config)

        def get(self, session_id, generation):
            if self.wrote:
                raise Unavailable("the store stopped answering")
            return self.inner.get(session_id, generation)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    import dataclasses

    store = FailingReadBack(resources.store)
    failing = dataclasses.replace(resources, store=store)
    mined = work.run_mining(resources, "sess-fail", 1, WARM, lambda f, s: None)
    with pytest.raises(Unavailable):
        work.run_training(failing, "sess-fail", 1, WARM, mined["warm_hardness"], mined["cases"], lambda f, s: None)
    assert store.wrote
    assert resources.store.generations("sess-fail") == []
    assert not (resources.store.root / "sess-fail" / "1").exists()


def test_a_training_job_whose_session_is_erased_while_it_runs_deletes_its_adapter(resources, tmp_path):
    """Issue 15: CloseSession erases the session while its training job runs; the job, finding the
    session gone when it ends, deletes the adapter it wrote and ends CANCELLED."""
    from soma.config import Settings
    from soma.jobs.app import TRAIN_TASK, make_celery
    from soma.jobs.tasks import register_tasks

    settings = Settings(state_dir=tmp_path)
    store = SqliteSessionStore(settings.dialogue.session_db)
    adapting_session(store, "sess-erased")

    class ErasedMidJob:
        """The session store, as seen by the worker: the session exists when the job starts, and is
        erased (CloseSession) by the time it ends."""

        def get(self, session_id):
            if resources.store.generations(session_id):  # the job has written its adapter: close now
                store.delete(session_id)
            return store.get(session_id)

        def __getattr__(self, name):
            return getattr(store, name)

    app = make_celery(settings.jobs)
    register_tasks(app, settings, resources_factory=lambda _s: resources, sessions_factory=lambda _s: ErasedMidJob())
    mined = work.run_mining(resources, "sess-erased", 1, WARM, lambda f, s: None)
    result = app.tasks[TRAIN_TASK].apply(
        args=["sess-erased", 1, WARM, mined["warm_hardness"], mined["cases"]], task_id="train-sess-erased-1"
    )
    meta = app.backend.get_task_meta("train-sess-erased-1")
    assert not result.successful() and meta["status"] == "REVOKED", (result.state, meta)
    assert "erased while the job ran" in str(meta["result"])
    assert resources.store.generations("sess-erased") == []
    assert not (resources.store.root / "sess-erased" / "1").exists()
