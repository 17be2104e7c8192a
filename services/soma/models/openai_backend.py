"""F as a black box: chat generation through any OpenAI-compatible HTTP endpoint.

The paper's MLaaS setting: the teacher is an API (vLLM's own OpenAI server, a hosted model, a
gateway), reached with ``POST {base_url}/chat/completions`` and ``stream: true``. The backend has
the surface the teacher service uses from `TransformersChatBackend` (``stream`` with cancellation,
``generate``, ``count_prompt_tokens``, ``name``) and needs nothing but the standard library:

- Streaming reads the server-sent events in a reader thread; the consuming thread waits on a
  queue in short slices, so a cancelled request (``is_cancelled()`` or the iterator closed) is
  noticed within ~0.1 s even while the server is still thinking, and the connection is closed:
  vLLM aborts a request whose client went away.
- Token counts come from the stream's final usage chunk (``stream_options.include_usage``). A
  server that sends none gets the prompt counted by ``count_prompt_tokens`` and the completion
  counted as one token per content delta (exact for vLLM, which sends one token per delta).
- ``count_prompt_tokens`` asks the server's ``/tokenize`` endpoint (vLLM offers it, with the
  model's own chat template: exact). Where there is none (404/405), it estimates 4 characters per
  token plus 4 tokens per message, and ``exact_token_count`` turns False.
- Context fitting is the server's business: there is no tokenizer here to drop old turns by, so
  a prompt over the server's window comes back as InvalidArgument with the server's message, and
  ``dropped_messages`` is always 0.
- HTTP errors map to soma errors: unreachable or 5xx → Unavailable, 400/413/422 → InvalidArgument,
  401/403 → FailedPrecondition (the key), 404 → FailedPrecondition (the model or the URL),
  408/504 or no data for ``timeout_s`` → DeadlineExceeded, 429 → ResourceExhausted.
"""

from __future__ import annotations

import http.client
import json
import math
import queue
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from soma.chat import CANCELLED, LENGTH, STOP, GenerationOutcome, Message, SamplingParams, outcome_of
from soma.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    SomaError,
    Unavailable,
)

_DONE = object()
_POLL_S = 0.1  # how often a waiting stream looks at is_cancelled()
_FINISH = {"stop": STOP, "length": LENGTH, "abort": CANCELLED}  # the API's words -> ours


def _server_message(body: bytes) -> str:
    """The error text of an OpenAI-style error body ({"error": {"message": ...}}), else the body."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500] or "(empty body)"
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, dict):
        return str(error.get("message") or error.get("detail") or error)[:500]
    return str(error)[:500]


class OpenAIChatBackend:
    """A chat model behind an OpenAI-compatible endpoint; requests may run concurrently."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str = "",
        timeout_s: float = 60.0,
        max_context_tokens: int | None = None,
        *,
        name: str | None = None,
    ):
        parsed = urllib.parse.urlsplit(base_url.rstrip("/"))
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"openai base url {base_url!r} must look like http://host:port/v1")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = name or model
        self.timeout_s = timeout_s
        self.max_context_tokens = max_context_tokens
        self.exact_token_count = True
        self._scheme = parsed.scheme
        self._host = parsed.hostname
        self._port = parsed.port
        self._path = parsed.path  # e.g. /v1
        self._headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    # -- HTTP -------------------------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=self.timeout_s)

    def _post(self, path: str, payload: dict[str, Any]) -> tuple[http.client.HTTPConnection, Any]:
        """Send a POST; the open connection and a 200 response, or the mapped soma error."""
        conn = self._connection()
        try:
            conn.request("POST", path, body=json.dumps(payload).encode(), headers=self._headers)
            response = conn.getresponse()
        except TimeoutError:
            conn.close()
            raise DeadlineExceeded(
                f"teacher endpoint {self.base_url} sent no response within {self.timeout_s:g} s "
                "(teacher.openai_timeout_s)"
            ) from None
        except OSError as err:  # refused, reset, DNS, TLS
            conn.close()
            raise Unavailable(
                f"teacher endpoint {self.base_url} is unreachable ({type(err).__name__}: {err}); check that the "
                "server runs and teacher.openai_base_url points at it"
            ) from None
        if response.status != 200:
            body = response.read()
            conn.close()
            raise self._http_error(response.status, body)
        return conn, response

    def _http_error(self, status: int, body: bytes) -> SomaError:
        detail = f"teacher endpoint {self.base_url} answered HTTP {status}: {_server_message(body)}"
        if status in (400, 413, 422):
            return InvalidArgument(detail)
        if status in (401, 403):
            return FailedPrecondition(f"{detail}; check teacher.openai_api_key")
        if status == 404:
            return FailedPrecondition(f"{detail}; check teacher.openai_base_url and teacher.openai_model")
        if status in (408, 504):
            return DeadlineExceeded(detail)
        if status == 429:
            return ResourceExhausted(f"{detail}; the endpoint is rate limiting, retry later")
        return Unavailable(detail)

    # -- prompt -----------------------------------------------------------------------------------

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        """Exact from the server's /tokenize (vLLM); estimated where the server has none."""
        root = self._path[: -len("/v1")] if self._path.endswith("/v1") else self._path
        payload = {"model": self.model, "messages": list(messages), "add_generation_prompt": True}
        try:
            conn, response = self._post(f"{root}/tokenize", payload)
        except FailedPrecondition:  # 404: no /tokenize here
            self.exact_token_count = False
            return sum(4 + math.ceil(len(m["content"]) / 4) for m in messages)
        try:
            return int(json.loads(response.read())["count"])
        finally:
            conn.close()

    # -- generation -------------------------------------------------------------------------------

    def _payload(self, messages: Sequence[Message], params: SamplingParams) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": list(messages),
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if params.temperature > 0:
            payload["top_p"] = params.top_p
            if params.seed is not None:
                payload["seed"] = params.seed
        return payload

    def generate(self, messages: Sequence[Message], params: SamplingParams) -> GenerationOutcome:
        return outcome_of(self.stream(messages, params))

    def generate_batch(
        self, conversations: Sequence[Sequence[Message]], params: SamplingParams, *, with_logprobs: bool = False
    ) -> list[GenerationOutcome]:
        """One request per conversation, in order (the server batches concurrent requests itself)."""
        if with_logprobs:
            raise ValueError(f"{self.name} is a black-box API backend: it offers no log-probabilities")
        return [self.generate(m, params) for m in conversations]

    def stream(
        self,
        messages: Sequence[Message],
        params: SamplingParams,
        is_cancelled: Callable[[], bool] = lambda: False,
    ) -> Iterator[str | GenerationOutcome]:
        """Yield text chunks as they arrive, then exactly one GenerationOutcome.

        The request is sent before the first item is asked for, so an unreachable server or a
        rejected request raises right away. Closing the iterator early closes the connection.
        """
        t0 = time.perf_counter()
        conn, response = self._post(f"{self._path}/chat/completions", self._payload(messages, params))
        return self._stream(conn, response, messages, t0, is_cancelled)

    def _stream(
        self,
        conn: http.client.HTTPConnection,
        response: Any,
        messages: Sequence[Message],
        t0: float,
        is_cancelled: Callable[[], bool],
    ) -> Iterator[str | GenerationOutcome]:
        lines: queue.SimpleQueue = queue.SimpleQueue()

        def read() -> None:
            try:
                for raw in response:  # http.client undoes chunked encoding; one SSE line per item
                    lines.put(raw)
            except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread
                lines.put(exc)
            finally:
                lines.put(_DONE)

        reader = threading.Thread(target=read, name=f"sse-{self.name}", daemon=True)
        reader.start()
        pieces: list[str] = []
        deltas = 0
        finish: str | None = None
        usage: dict[str, Any] | None = None
        cancelled = False
        last_data = time.monotonic()
        try:
            while True:
                if is_cancelled():
                    cancelled = True
                    break
                try:
                    item = lines.get(timeout=_POLL_S)
                except queue.Empty:
                    if time.monotonic() - last_data > self.timeout_s:
                        raise DeadlineExceeded(
                            f"teacher endpoint {self.base_url} sent nothing for {self.timeout_s:g} s mid-answer "
                            "(teacher.openai_timeout_s)"
                        ) from None
                    continue
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    if isinstance(item, TimeoutError):
                        raise DeadlineExceeded(
                            f"teacher endpoint {self.base_url} sent nothing for {self.timeout_s:g} s mid-answer "
                            "(teacher.openai_timeout_s)"
                        )
                    raise Unavailable(
                        f"teacher endpoint {self.base_url} broke off the answer ({type(item).__name__}: {item})"
                    )
                last_data = time.monotonic()
                line = item.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue  # blank separators, comments, event names
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    error = event["error"]
                    status = error.get("code") if isinstance(error, dict) else None
                    raise self._http_error(status if isinstance(status, int) else 500, data.encode())
                if event.get("usage"):
                    usage = event["usage"]
                for choice in event.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") or ""
                    if text:
                        deltas += 1
                        pieces.append(text)
                        yield text
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
        finally:
            # Closing the socket ends the reader thread and, in vLLM, aborts a running request.
            try:
                if conn.sock is not None:
                    conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        latency = (time.perf_counter() - t0) * 1000
        if cancelled:
            reason = CANCELLED
        elif finish is None:
            raise Unavailable(f"teacher endpoint {self.base_url} ended the stream without a finish reason")
        else:
            reason = _FINISH.get(finish, finish)
        if usage is not None:
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion_tokens = int(usage.get("completion_tokens") or deltas)
        else:
            prompt_tokens = self.count_prompt_tokens(messages) if not cancelled else 0
            completion_tokens = deltas
        yield GenerationOutcome(
            text="".join(pieces),
            finish_reason=reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            model_latency_ms=latency,
            dropped_messages=0,
        )
