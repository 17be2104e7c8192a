"""The OpenAI-compatible teacher backend against a tiny local HTTP server that plays the endpoint.

The real thing (vLLM's own OpenAI server) is in tests/integration/test_vllm_backends.py; here
the server scripts exact answers: streamed deltas, the usage chunk, errors, stalls.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from soma.chat import GenerationOutcome, SamplingParams
from soma.config import ConfigError, TeacherSettings
from soma.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from soma.models.backends import make_chat_backend
from soma.models.openai_backend import OpenAIChatBackend

USER = [{"role": "user", "content": "Say hello."}]


def _chunk(content=None, finish=None, usage=None) -> bytes:
    event = {"object": "chat.completion.chunk", "choices": []}
    if content is not None or finish is not None:
        event["choices"] = [{"index": 0, "delta": {"content": content} if content else {}, "finish_reason": finish}]
    if usage is not None:
        event["usage"] = usage
    return b"data: " + json.dumps(event).encode() + b"\n\n"


class FakeEndpoint:
    """What the handler does next is set by the test: `script(handler, payload)`."""

    def __init__(self):
        self.requests: list[tuple[str, dict, dict]] = []
        self.script = None
        self.disconnected = threading.Event()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                payload = json.loads(body)
                endpoint.requests.append((self.path, dict(self.headers), payload))
                endpoint.script(self, payload)

            def send_json(self, status, obj):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def send_events(self, events, delay=0.0):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for event in events:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                        self.wfile.flush()
                        time.sleep(delay)
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    endpoint.disconnected.set()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint():
    ep = FakeEndpoint()
    yield ep
    ep.close()


def backend(endpoint, **kw) -> OpenAIChatBackend:
    return OpenAIChatBackend(
        endpoint.url, "teacher-model", kw.pop("api_key", "sk-test"), kw.pop("timeout_s", 5.0), **kw
    )


def _answer(handler, payload):
    handler.send_events(
        [
            _chunk("Hel"),
            _chunk("lo!"),
            _chunk(finish="stop"),
            _chunk(usage={"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}),
            b"data: [DONE]\n\n",
        ]
    )


def test_streams_chunks_then_one_outcome_with_the_usage_chunks_counts(endpoint):
    endpoint.script = _answer
    items = list(backend(endpoint).stream(USER, SamplingParams(max_new_tokens=20)))
    assert items[:-1] == ["Hel", "lo!"]
    outcome = items[-1]
    assert isinstance(outcome, GenerationOutcome)
    assert (outcome.text, outcome.finish_reason) == ("Hello!", "stop")
    assert (outcome.prompt_tokens, outcome.completion_tokens, outcome.dropped_messages) == (11, 3, 0)
    path, headers, payload = endpoint.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sk-test"
    assert payload["model"] == "teacher-model" and payload["messages"] == USER
    assert payload["stream"] is True and payload["stream_options"] == {"include_usage": True}
    assert payload["max_tokens"] == 20 and payload["temperature"] == 0.0
    assert "seed" not in payload  # greedy: nothing to seed


def test_sampling_sends_top_p_and_seed(endpoint):
    endpoint.script = _answer
    backend(endpoint).generate(USER, SamplingParams(max_new_tokens=5, temperature=0.7, top_p=0.9, seed=3))
    payload = endpoint.requests[0][2]
    assert (payload["temperature"], payload["top_p"], payload["seed"]) == (0.7, 0.9, 3)


def test_length_finish_and_missing_usage_fall_back_to_counting(endpoint):
    def script(handler, payload):
        if handler.path.endswith("/tokenize"):
            handler.send_json(200, {"count": 9, "max_model_len": 2048, "tokens": list(range(9))})
        else:
            handler.send_events([_chunk("a"), _chunk("b"), _chunk(finish="length"), b"data: [DONE]\n\n"])

    endpoint.script = script
    outcome = backend(endpoint).generate(USER, SamplingParams(max_new_tokens=2))
    assert (outcome.text, outcome.finish_reason) == ("ab", "length")
    assert (outcome.prompt_tokens, outcome.completion_tokens) == (9, 2)
    assert endpoint.requests[1][0] == "/tokenize"  # vLLM's endpoint sits beside /v1, not under it


def test_count_prompt_tokens_is_exact_via_tokenize_else_an_estimate(endpoint):
    sent = []

    def script(handler, payload):
        sent.append(payload)
        handler.send_json(200, {"count": 17, "max_model_len": 2048, "tokens": []})

    endpoint.script = script
    b = backend(endpoint)
    assert b.count_prompt_tokens(USER) == 17 and b.exact_token_count
    assert sent[0]["add_generation_prompt"] is True and sent[0]["messages"] == USER
    endpoint.script = lambda handler, payload: handler.send_json(404, {"detail": "Not Found"})
    assert b.count_prompt_tokens(USER) == 4 + 3  # 4 per message + ceil(10 chars / 4)
    assert not b.exact_token_count


def test_cancellation_stops_reading_and_closes_the_connection(endpoint):
    endpoint.script = lambda handler, payload: handler.send_events([_chunk(f"t{i} ") for i in range(200)], delay=0.02)
    seen = []
    items = list(
        backend(endpoint).stream(USER, SamplingParams(), is_cancelled=lambda: len(seen) >= 3 or seen.append(1))
    )
    outcome = items[-1]
    assert outcome.finish_reason == "cancelled"
    assert len(items) < 20
    assert endpoint.disconnected.wait(5), "the server kept streaming to a cancelled client"


def test_closing_the_iterator_closes_the_connection(endpoint):
    endpoint.script = lambda handler, payload: handler.send_events([_chunk(f"t{i} ") for i in range(200)], delay=0.02)
    stream = backend(endpoint).stream(USER, SamplingParams())
    assert next(stream) == "t0 "
    stream.close()
    assert endpoint.disconnected.wait(5)


def test_a_silent_server_is_noticed_while_waiting_for_the_first_token(endpoint):
    # headers, then nothing for 3 s
    endpoint.script = lambda handler, payload: (handler.send_response(200), handler.end_headers(), time.sleep(3))
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="sent nothing for 0.5 s"):
        list(backend(endpoint, timeout_s=0.5).stream(USER, SamplingParams()))
    assert time.monotonic() - started < 2.5
    cancelled = backend(endpoint, timeout_s=30).stream(USER, SamplingParams(), is_cancelled=lambda: True)
    assert list(cancelled)[-1].finish_reason == "cancelled"  # is_cancelled is honoured without any data


@pytest.mark.parametrize(
    ("status", "error", "hint"),
    [
        (400, InvalidArgument, "maximum context length"),
        (401, FailedPrecondition, "openai_api_key"),
        (404, FailedPrecondition, "openai_model"),
        (429, ResourceExhausted, "rate limiting"),
        (503, Unavailable, "HTTP 503"),
        (504, DeadlineExceeded, "HTTP 504"),
    ],
)
def test_http_errors_map_to_soma_errors_with_the_servers_message(endpoint, status, error, hint):
    message = "This model's maximum context length is 2048 tokens."
    endpoint.script = lambda handler, payload: handler.send_json(
        status, {"error": {"message": message, "code": status}}
    )
    with pytest.raises(error) as caught:
        backend(endpoint).stream(USER, SamplingParams())  # raises before the first item
    assert message in str(caught.value) and hint in str(caught.value)


def test_an_error_event_mid_stream_is_raised(endpoint):
    error = {"error": {"message": "engine died", "code": 500}}
    endpoint.script = lambda handler, payload: handler.send_events(
        [_chunk("a"), b"data: " + json.dumps(error).encode() + b"\n\n"]
    )
    with pytest.raises(Unavailable, match="engine died"):
        list(backend(endpoint).stream(USER, SamplingParams()))


def test_a_server_that_is_down_is_unavailable_with_the_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    b = OpenAIChatBackend(f"http://127.0.0.1:{port}/v1", "m", "", 2.0)
    with pytest.raises(Unavailable, match=rf"http://127.0.0.1:{port}/v1 is unreachable .*openai_base_url"):
        b.stream(USER, SamplingParams())


def test_factory_builds_the_openai_backend_and_checks_its_keys():
    with pytest.raises(ConfigError, match="teacher.openai_base_url"):
        make_chat_backend("x", TeacherSettings(backend="openai"), "teacher")
    from soma.config import SurrogateSettings

    with pytest.raises(ConfigError, match="surrogate.backend=openai is not supported"):
        make_chat_backend("x", SurrogateSettings(backend="openai", openai_base_url="http://h/v1"), "surrogate")
    section = TeacherSettings(
        backend="openai",
        model="gpt-x",
        openai_base_url="https://api.example/v1/",
        openai_api_key="k",
        openai_timeout_s=7,
    )
    b = make_chat_backend("gpt-x", section, "teacher")
    assert isinstance(b, OpenAIChatBackend)
    assert (b.base_url, b.model, b.name, b.timeout_s) == ("https://api.example/v1", "gpt-x", "gpt-x", 7)
    with pytest.raises(ConfigError, match="must look like"):
        make_chat_backend("x", TeacherSettings(backend="openai", openai_base_url="api.example"), "teacher")


def test_factory_names_the_setup_command_when_vllm_is_missing(monkeypatch):
    from soma.models import backends

    monkeypatch.setattr(backends, "vllm_available", lambda: False)
    with pytest.raises(ConfigError, match=r"teacher.backend=vllm, but vllm is not installed.*scripts/setup-vllm.sh"):
        make_chat_backend("x", TeacherSettings(backend="vllm"), "teacher")
