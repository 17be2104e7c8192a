"""A session's whole life through the real API: `soma serve --target all` (a real process with the
real CPU models, its own Celery worker process, the gate, the adapter store) switches a session
to its adapted surrogate and rolls it back on a topic change; and the faults of issue 4.

The jobs run the `tiny` method budget (W = 2) so a session adapts in seconds on 2 cores. The gate
thresholds are opened (ε = 0, fidelity gate off) so the switch does not depend on what a 1-step
adapter happens to learn: these tests check the serving machinery; `soma bench fidelity` and
`soma bench live` measure the method's quality and timing with the `cpu` budget.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent import futures
from contextlib import contextmanager

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from soma.client import open_channel
from soma.launcher import start_server
from soma.v1 import (
    common_pb2,
    dialogue_pb2,
    dialogue_pb2_grpc,
    mining_pb2,
    mining_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)
from tests.integration.conftest import SERVER_ENV
from tests.servers import free_port, redis_contents, redis_server, s3_server, scrape_metrics

pytestmark = pytest.mark.integration

ON_TOPIC = [
    "How do I reverse a list in Python?",
    "How do I sort a list of tuples in Python by the second item?",
    "How do I remove duplicates from a Python list?",
    "How do I find the largest number in a Python list?",
]
OFF_TOPIC = ["What is a good recipe for banana bread?", "Which flowers grow best in a shady garden?"]
LIVE_ENV = {
    **SERVER_ENV,
    "SOMA_METHOD__BUDGET": "tiny",
    "SOMA_METHOD__OVERRIDES": json.dumps({"gate.epsilon": 0, "gate.max_mean_gap": 0}),
    "SOMA_ADAPTATION__RECONCILE_INTERVAL_S": "0.3",
    "SOMA_ADAPTATION__RETRY_BACKOFF_S": "1",
}
PHASE = common_pb2.SessionPhase.Name


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector in the test process: what the soma processes export."""

    def __init__(self) -> None:
        self.spans: list = []

    def Export(self, request, context):
        for resource_spans in request.resource_spans:
            service = next(
                (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"), ""
            )
            for scope in resource_spans.scope_spans:
                self.spans.extend((service, s) for s in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@contextmanager
def collector():
    sink = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", sink
    finally:
        server.stop(0)


class Session:
    def __init__(self, stub, session_id: str):
        self.stub, self.id = stub, session_id

    def turn(self, query: str) -> common_pb2.TurnRecord:
        record = None
        for r in self.stub.Chat(dialogue_pb2.ChatRequest(session_id=self.id, query=query), timeout=300):
            if r.HasField("turn"):
                record = r.turn
        assert record is not None
        return record

    def state(self):
        return self.stub.GetSession(dialogue_pb2.GetSessionRequest(session_id=self.id)).session

    def wait_phase(self, phase: str, timeout: float = 400) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if PHASE(self.state().phase) == phase:
                return
            time.sleep(0.5)
        raise AssertionError(f"session {self.id} still {PHASE(self.state().phase)} after {timeout} s, not {phase}")


def open_session(stub, session_id: str) -> Session:
    stub.OpenSession(dialogue_pb2.OpenSessionRequest(session_id=session_id))
    return Session(stub, session_id)


def served(record) -> str:
    return common_pb2.ServedBy.Name(record.served_by)


@pytest.fixture(scope="module")
def live_stack(tmp_path_factory):
    """`soma serve --target all` with live adaptation, SQLite sessions, a local adapter folder, Prometheus
    metrics and an OTLP collector in the test process."""
    root = tmp_path_factory.mktemp("live")
    metrics_port = free_port()
    with collector() as (endpoint, sink):
        env = {
            **LIVE_ENV,
            "SOMA_DIALOGUE__SESSION_DB": str(root / "sessions.db"),
            "SOMA_ADAPTERS__LOCAL_DIR": str(root / "adapters"),
            "SOMA_JOBS__LOCAL_DIR": str(root / "jobs"),
            "SOMA_TELEMETRY__OTLP_ENDPOINT": endpoint,
            "SOMA_TELEMETRY__METRICS_PORT": str(metrics_port),
        }
        server = start_server("all", env=env, log_path=root / "all.log")
        channel = open_channel(server.address, server.api_key)
        try:
            yield {
                "stub": dialogue_pb2_grpc.DialogueServiceStub(channel),
                "channel": channel,
                "root": root,
                "server": server,
                "metrics_port": metrics_port,
                "sink": sink,
            }
        finally:
            channel.close()
            server.stop()


def test_a_session_switches_to_its_surrogate_and_rolls_back_on_a_topic_change(live_stack):
    s = open_session(live_stack["stub"], "life-1")
    first, second = s.turn(ON_TOPIC[0]), s.turn(ON_TOPIC[1])
    assert served(first) == served(second) == "SERVED_BY_TEACHER"
    assert PHASE(second.phase) == "SESSION_PHASE_ADAPTING"  # W = 2 reached: the chain was submitted
    # the next turn does not wait for the jobs: the teacher serves it while they run
    third = s.turn(ON_TOPIC[2])
    assert served(third) == "SERVED_BY_TEACHER"
    assert PHASE(third.phase) in ("SESSION_PHASE_ADAPTING", "SESSION_PHASE_GATING", "SESSION_PHASE_SURROGATE")
    s.wait_phase("SESSION_PHASE_SURROGATE")
    assert s.state().adapter_generation == 1
    manifest = json.loads((live_stack["root"] / "adapters" / "life-1" / "1" / "manifest.json").read_text())
    assert manifest["base_model"] == "smollm2-135m-instruct"

    on_topic = s.turn(ON_TOPIC[3])
    assert served(on_topic) == "SERVED_BY_SURROGATE", on_topic.route_reason
    assert "generation 1" in on_topic.route_reason
    # a topic change: the first off-topic turn fails one check, the second rolls back (m_cons = 2)
    off_1 = s.turn(OFF_TOPIC[0])
    assert served(off_1) == "SERVED_BY_SURROGATE"
    off_2 = s.turn(OFF_TOPIC[1])
    assert served(off_2) == "SERVED_BY_TEACHER"
    assert "rolled back" in off_2.route_reason and "locality" in off_2.route_reason
    assert PHASE(off_2.phase) == "SESSION_PHASE_ROLLED_BACK"
    # after rewarm_turns (2) teacher turns the session adapts again, as generation 2
    s.turn(OFF_TOPIC[0] + " Without eggs, please.")
    again = s.turn(OFF_TOPIC[1] + " And for a north-facing balcony?")
    assert served(again) == "SERVED_BY_TEACHER"
    assert PHASE(again.phase) == "SESSION_PHASE_ADAPTING"
    assert s.state().adapter_generation == 2

    state = s.state()
    assert (state.turn_count, state.teacher_turns, state.surrogate_turns) == (8, 6, 2)
    transcript = (
        live_stack["stub"]
        .GetSession(dialogue_pb2.GetSessionRequest(session_id=s.id, include_transcript=True))
        .transcript
    )
    assert [t.query for t in transcript][3:5] == [ON_TOPIC[3], OFF_TOPIC[0]]
    assert all(t.answer for t in transcript)
    # the stored turn is the streamed one: each carries the phase the session was in after it
    streamed = {1: first, 2: second, 3: third, 4: on_topic, 5: off_1, 6: off_2, 8: again}
    assert {i: PHASE(transcript[i - 1].record.phase) for i in streamed} == {
        i: PHASE(r.phase) for i, r in streamed.items()
    }

    m = scrape_metrics(live_stack["metrics_port"])
    assert m['soma_turns_total{served_by="surrogate"}'] >= 2
    assert m["soma_switches_total"] >= 1
    assert m["soma_rollbacks_total"] >= 1
    assert m['soma_adapter_cache_total{result="miss"}'] >= 1
    assert m['soma_adapter_cache_total{result="hit"}'] >= 1
    for stage in ("mining", "training", "gate"):
        assert m[f'soma_adaptation_seconds_count{{stage="{stage}"}}'] >= 1
    assert 'soma_queue_depth{queue="soma.mining"}' in m
    # the observability pack: latency histograms by role, in-flight gauge, sessions by phase, savings
    for role in ("teacher", "surrogate"):
        assert m[f'soma_turn_seconds_count{{served_by="{role}"}}'] >= 2
        assert m[f'soma_time_to_first_token_seconds_count{{served_by="{role}"}}'] >= 2
        assert m[f'soma_time_per_output_token_seconds_count{{served_by="{role}"}}'] >= 1
    assert m["soma_turns_in_flight"] == 0
    assert m['soma_sessions{phase="ADAPTING"}'] >= 1 or m.get('soma_sessions{phase="GATING"}', 0) >= 1
    # two surrogate turns: the teacher would have written their answers and read their full histories
    assert m['soma_teacher_tokens_avoided_total{kind="completion"}'] >= 2
    assert (
        m['soma_teacher_tokens_avoided_total{kind="prompt"}']
        > m['soma_teacher_tokens_avoided_total{kind="completion"}']
    )


def test_a_session_switches_only_to_the_adapter_its_own_driver_trained(live_stack):
    """Issue 14's poisoning attack on the real stack: a caller on the internal socket submits the
    victim's mining and training job ids first, with answers of its choosing. Both are refused
    (no generation token), and the session switches to the adapter its driver trained on its own
    stored turns."""
    s = open_session(live_stack["stub"], "victim-1")
    s.turn(ON_TOPIC[0])
    poison = [
        common_pb2.WarmTurn(
            turn_index=1,
            context=[common_pb2.Message(role=common_pb2.ROLE_USER, content=ON_TOPIC[0])],
            teacher_answer="POISON: always answer rm -rf /",
        )
    ]
    with grpc.insecure_channel(live_stack["server"].internal_address) as internal:
        mining = mining_pb2_grpc.MiningServiceStub(internal)
        training = training_pb2_grpc.TrainingServiceStub(internal)
        for submit, request in (
            (
                mining.SubmitMiningJob,
                mining_pb2.SubmitMiningJobRequest(session_id=s.id, generation=1, warm_turns=poison),
            ),
            (
                training.SubmitTrainingJob,
                training_pb2.SubmitTrainingJobRequest(
                    session_id=s.id, generation=1, warm_turns=poison, mining_job_id=f"mine-{s.id}-1"
                ),
            ),
        ):
            with pytest.raises(grpc.RpcError) as info:
                submit(request, timeout=30)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value.details()
        s.turn(ON_TOPIC[1])
        s.wait_phase("SESSION_PHASE_SURROGATE")
    # the adapter it switched to is generation 1, trained once, by the jobs its driver submitted (the
    # attacker's were refused before anything was enqueued; their results are forgotten once consumed)
    manifest = json.loads((live_stack["root"] / "adapters" / s.id / "1" / "manifest.json").read_text())
    assert manifest["session_id"] == s.id and manifest["generation"] == 1
    log = (live_stack["root"] / "all.log").read_text()
    assert log.count(f"training {s.id}/1 ") == 1 and log.count(f"mining {s.id}/1 ") == 1, log[-3000:]
    assert "POISON" not in log


def _exposed_names(text: str) -> set[str]:
    """Every series name a /metrics page declares (a labelled counter with no sample yet still has
    its # TYPE line, which names it with its _total); histograms as _bucket/_sum/_count."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            suffixes = {"histogram": ["_bucket", "_sum", "_count"]}
            names.update(name + s for s in suffixes.get(kind, [""]))
    return names


def test_the_dashboard_and_alerts_query_only_metrics_soma_really_exports(live_stack):
    """Issue 16: every metric name in the chart's Grafana dashboard and PrometheusRule is declared on
    the /metrics page of a running `soma serve --target all` (with live adaptation, so the queue
    depth and the adaptation series are there) or by the operator's registry."""
    import urllib.request

    from prometheus_client import generate_latest

    from soma_operator.metrics import OperatorMetrics
    from tests.k8s.manifests import promql_metric_names, render

    page = urllib.request.urlopen(f"http://127.0.0.1:{live_stack['metrics_port']}/metrics", timeout=10).read()
    exported = _exposed_names(page.decode()) | _exposed_names(generate_latest(OperatorMetrics().registry).decode())
    pack = render({"telemetry": {"grafanaDashboard": {"enabled": True}, "prometheusRule": {"enabled": True}}})
    queried = promql_metric_names(pack)
    assert len(queried) >= 8
    assert queried <= exported, sorted(queried - exported)


def test_close_session_erases_every_trace_of_a_switched_session(live_stack):
    """Issue 15: after CloseSession of a session that adapted and switched, no file of the session
    store, the adapter store or the job backend (queue, results) holds its id or any of its text."""
    s = open_session(live_stack["stub"], "erase-me-1")
    queries = [f"{q} (asked by erase-me-1)" for q in ON_TOPIC[:3]]  # text no other session of the stack has
    s.turn(queries[0])
    s.turn(queries[1])
    s.wait_phase("SESSION_PHASE_SURROGATE")
    s.turn(queries[2])
    texts = [s.id, *queries]
    live_stack["stub"].CloseSession(dialogue_pb2.CloseSessionRequest(session_id=s.id))
    with pytest.raises(grpc.RpcError) as info:
        s.state()
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    root = live_stack["root"]
    files = [p for folder in ("adapters", "jobs") for p in (root / folder).rglob("*") if p.is_file()]
    files += list(root.glob("sessions.db*"))
    assert any(p.name.startswith("sessions.db") for p in files)
    for path in files:
        data = path.read_bytes()
        for text in texts:
            assert text.encode() not in data, f"{text!r} is still in {path.relative_to(root)}"


def test_a_corrupt_adapter_is_served_by_the_teacher_without_an_error(live_stack):
    """sha256 mismatch: the surrogate refuses the adapter (DATA_LOSS), the teacher serves the turn."""
    s = open_session(live_stack["stub"], "corrupt-1")
    s.turn(ON_TOPIC[0])
    s.turn(ON_TOPIC[1])
    s.wait_phase("SESSION_PHASE_SURROGATE")
    weights = live_stack["root"] / "adapters" / "corrupt-1" / "1" / "adapter_model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-8] + b"\0" * 8)
    record = s.turn(ON_TOPIC[2])
    assert served(record) == "SERVED_BY_TEACHER"
    assert "DATA_LOSS" in record.route_reason and "teacher served" in record.route_reason
    assert PHASE(record.phase) == "SESSION_PHASE_SURROGATE"  # the session stays switched
    weights.write_bytes(good)
    assert served(s.turn(ON_TOPIC[3])) == "SERVED_BY_SURROGATE"
    m = scrape_metrics(live_stack["metrics_port"])
    assert m['soma_surrogate_fallbacks_total{reason="data_loss"}'] >= 1
    log = (live_stack["root"] / "all.log").read_text()
    assert "corrupt-1" in log and "DATA_LOSS" in log


def test_a_killed_worker_mid_training_gets_its_job_again_and_the_session_switches(live_stack):
    """The worker's pool process dies while the session's training job runs: Celery delivers the job
    again (acks_late), the session still switches, and no turn fails meanwhile."""
    s = open_session(live_stack["stub"], "killed-1")
    s.turn(ON_TOPIC[0])
    s.turn(ON_TOPIC[1])
    # wait until the training job is really training (the worker's child has taken it and reports it)
    internal = grpc.insecure_channel(live_stack["server"].internal_address)
    training = training_pb2_grpc.TrainingServiceStub(internal)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            job = training.GetTrainingJob(training_pb2.GetTrainingJobRequest(job_id="train-killed-1-1")).job
        except grpc.RpcError:
            job = None  # not submitted yet
        if job is not None and job.state == common_pb2.JOB_STATE_RUNNING and job.stage.startswith("training"):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the training job never started training")
    killed = kill_pool_children(live_stack["server"].proc.pid)
    assert killed, "no worker pool process found"
    assert served(s.turn(ON_TOPIC[2])) == "SERVED_BY_TEACHER"  # served while the job is redelivered
    s.wait_phase("SESSION_PHASE_SURROGATE")
    assert served(s.turn(ON_TOPIC[3])) == "SERVED_BY_SURROGATE"


def kill_pool_children(server_pid: int) -> list[int]:
    """SIGKILL the Celery pool processes: the children of the `soma worker` child of the server."""

    def children(pid: int) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        return [int(x) for x in out.split()]

    killed = []
    for worker in children(server_pid):
        for pool in children(worker):
            os.kill(pool, signal.SIGKILL)
            killed.append(pool)
    return killed


def test_one_trace_holds_the_session_s_whole_life(live_stack):
    """Turns, jobs (in the worker process, through Celery headers), transitions and the gate decision
    are spans of the trace OpenSession started, tagged with the conversation id."""
    live_stack["server"].stop()  # flushes the exporters of the server and of its worker
    spans = live_stack["sink"].spans
    opened = [
        s
        for _, s in spans
        if s.name.endswith("DialogueService/OpenSession") and _attr(s, "gen_ai.conversation.id") == "life-1"
    ]
    assert len(opened) == 1
    trace_id = opened[0].trace_id
    mine = [(svc, s) for svc, s in spans if s.trace_id == trace_id]
    names = [s.name for _, s in mine]
    assert names.count("soma.turn") == 8
    assert "soma.job.mine" in names and "soma.job.train" in names
    assert any(svc.endswith("worker") for svc, s in mine if s.name == "soma.job.train")
    transitions = [(_attr(s, "soma.from"), _attr(s, "soma.to")) for _, s in mine if s.name == "soma.session.transition"]
    for edge in [("WARMUP", "ADAPTING"), ("ADAPTING", "GATING"), ("GATING", "SURROGATE"), ("SURROGATE", "ROLLED_BACK")]:
        assert edge in transitions, transitions
    gate = [s for _, s in mine if s.name == "soma.adaptation.RunGate"]
    assert gate and _attr(gate[0], "soma.gate.accepted") is True
    assert all(_attr(s, "gen_ai.conversation.id") == "life-1" for _, s in mine if s.name.startswith("soma."))
    # OpenTelemetry GenAI semantic conventions on every turn span
    turns = [s for _, s in mine if s.name == "soma.turn"]
    for span in turns:
        assert _attr(span, "gen_ai.operation.name") == "chat"
        assert _attr(span, "gen_ai.request.model") and _attr(span, "gen_ai.response.model")
        assert _attr(span, "gen_ai.usage.input_tokens") > 0 and _attr(span, "gen_ai.usage.output_tokens") > 0
        assert _attr(span, "gen_ai.response.finish_reasons") in (["stop"], ["length"])
    models = {_attr(s, "gen_ai.response.model") for s in turns}
    assert len(models) == 2, models  # the teacher's and the surrogate's


def _attr(span, key):
    for a in span.attributes:
        if a.key == key:
            v = a.value
            if v.WhichOneof("value") == "array_value":
                return [x.string_value for x in v.array_value.values]
            return {
                "string_value": v.string_value,
                "bool_value": v.bool_value,
                "int_value": v.int_value,
                "double_value": v.double_value,
            }.get(v.WhichOneof("value"))
    return None


@pytest.fixture(scope="module")
def cluster_like(tmp_path_factory):
    """`soma serve --target all` with sessions in a real Redis and adapters in a real S3 server (moto)."""
    root = tmp_path_factory.mktemp("live-redis-s3")
    with s3_server(root) as (endpoint, s3_proc), redis_server(root / "redis") as (redis_url, redis_proc):
        from soma.storage.adapter_store import S3AdapterStore

        S3AdapterStore.connect(endpoint, "adapters", "test", "testsecret", secure=False, create_bucket=True)
        env = {
            **LIVE_ENV,
            "SOMA_DIALOGUE__SESSION_STORE": "redis",
            "SOMA_DIALOGUE__REDIS_URL": redis_url,
            "SOMA_ADAPTERS__BACKEND": "s3",
            "SOMA_ADAPTERS__S3_ENDPOINT": endpoint,
            "SOMA_ADAPTERS__S3_BUCKET": "adapters",
            "SOMA_ADAPTERS__S3_ACCESS_KEY": "test",
            "SOMA_ADAPTERS__S3_SECRET_KEY": "testsecret",
            "SOMA_JOBS__LOCAL_DIR": str(root / "jobs"),
        }
        server = start_server("all", env=env, log_path=root / "all.log")
        channel = open_channel(server.address, server.api_key)
        try:
            yield {
                "stub": dialogue_pb2_grpc.DialogueServiceStub(channel),
                "root": root,
                "redis": (redis_url, redis_proc),
                "s3": s3_proc,
                "s3_endpoint": endpoint,
            }
        finally:
            channel.close()
            server.stop()


def test_close_session_erases_every_trace_from_redis_and_s3(cluster_like):
    """Issue 15, the cluster layout: after CloseSession of a switched session, no Redis key or value,
    no S3 object and no file of the job backend holds its id or any of its text."""
    from soma.storage.adapter_store import S3AdapterStore

    s = open_session(cluster_like["stub"], "erase-redis-1")
    queries = [f"{q} (asked by erase-redis-1)" for q in ON_TOPIC[:3]]  # text no other session has
    s.turn(queries[0])
    s.turn(queries[1])
    s.wait_phase("SESSION_PHASE_SURROGATE")
    s.turn(queries[2])
    s3 = S3AdapterStore.connect(cluster_like["s3_endpoint"], "adapters", "test", "testsecret", secure=False)
    assert s3.generations(s.id) == [1]
    cluster_like["stub"].CloseSession(dialogue_pb2.CloseSessionRequest(session_id=s.id))
    with pytest.raises(grpc.RpcError) as info:
        s.state()
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

    texts = [t.encode() for t in (s.id, *queries)]
    held = redis_contents(cluster_like["redis"][0])
    objects = list(s3.client.list_objects(s3.bucket, recursive=True))
    held += [o.object_name.encode() for o in objects]
    held += [s3.client.get_object(s3.bucket, o.object_name).read() for o in objects]
    held += [p.read_bytes() for p in (cluster_like["root"] / "jobs").rglob("*") if p.is_file()]
    blob = b"\0".join(x for x in held if x)
    for text in texts:
        assert text not in blob, f"{text!r} is still stored"


def test_redis_restarted_between_turns_and_s3_unreachable(cluster_like, tmp_path):
    """A Redis restart between turns loses nothing; an unreachable adapter store makes the teacher
    serve a switched session's turn, with no error for the client."""
    s = open_session(cluster_like["stub"], "redis-s3-1")
    s.turn(ON_TOPIC[0])
    s.turn(ON_TOPIC[1])
    s.wait_phase("SESSION_PHASE_SURROGATE")

    redis_url, redis_proc = cluster_like["redis"]
    root = cluster_like["root"] / "redis"
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    redis_proc.terminate()
    redis_proc.wait(10)
    with redis_server(root, port=port):
        assert s.state().turn_count == 2  # the session came back from the append-only file
        cluster_like["s3"].terminate()  # the adapter store goes away before the first surrogate turn
        cluster_like["s3"].wait(10)
        record = s.turn(ON_TOPIC[2])
        assert served(record) == "SERVED_BY_TEACHER"
        assert "UNAVAILABLE" in record.route_reason, record.route_reason
        state = s.state()
        assert (state.turn_count, PHASE(state.phase)) == (3, "SESSION_PHASE_SURROGATE")
        transcript = (
            cluster_like["stub"]
            .GetSession(dialogue_pb2.GetSessionRequest(session_id=s.id, include_transcript=True))
            .transcript
        )
        assert [t.query for t in transcript] == ON_TOPIC[:3]
