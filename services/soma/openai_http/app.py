"""The OpenAI-compatible HTTP door: `POST /v1/chat/completions` and `GET /v1/models` (FastAPI), in
front of the same Dialogue API the gRPC clients call.

Every request becomes Dialogue RPCs on the server's own port with the caller's bearer key, so
authentication, tenants, quotas and status codes are the gRPC API's; gRPC statuses come back as
OpenAI-shaped error bodies. A conversation is a soma session: named by the `X-Session-Id` header
(opened on first use), or recognised by the history the request resends (see conversation.py);
the response names it in `x-session-id` and in a `soma` field of the body (or of the last chunk).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from soma.openai_http.conversation import BadRequest, check_supported, contradiction, parse_messages
from soma.session.records import history_digest, history_key
from soma.v1 import common_pb2, dialogue_pb2, dialogue_pb2_grpc

SERVED_BY = {common_pb2.SERVED_BY_TEACHER: "teacher", common_pb2.SERVED_BY_SURROGATE: "surrogate"}
FINISH = {common_pb2.FINISH_REASON_STOP: "stop", common_pb2.FINISH_REASON_LENGTH: "length"}
DISCONNECT_POLL_S = 0.25  # how often a waiting request checks that its client is still there


async def _cancelled_on_exit(events: Iterator[str], call) -> AsyncIterator[str]:
    """The SSE events, read in a worker thread; when the client hangs up, Starlette cancels this
    generator, and the turn's Chat call is cancelled at once (a plain iterator would be left blocked
    in its thread, and the turn the client never received would be stored)."""
    from starlette.concurrency import iterate_in_threadpool

    try:
        async for event in iterate_in_threadpool(events):
            yield event
    finally:
        call.cancel()


# gRPC status -> (HTTP status, OpenAI error type)
STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "conflict_error"),
    grpc.StatusCode.ABORTED: (409, "conflict_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (409, "conflict_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "api_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "api_error"),
}


class HttpError(Exception):
    def __init__(self, status: int, message: str, type_: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.type, self.param, self.code = status, type_, param, code
        self.headers: dict[str, str] = {}

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}


def from_rpc(err: grpc.RpcError) -> HttpError:
    status, type_ = STATUS.get(err.code(), (500, "api_error"))
    details = err.details() or err.code().name
    out = HttpError(status, details, type_, code=err.code().name.lower())
    if err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
        wait = re.search(r"retry in ([0-9.]+) s", details)
        if wait:  # a rate: waiting helps
            out.headers["retry-after"] = str(max(1, math.ceil(float(wait.group(1)))))
        elif "in flight" in details:  # a turn slot frees when a turn ends
            out.headers["retry-after"] = "1"
        else:  # a count or size limit: waiting does not help, and the OpenAI SDKs read this header
            out.headers["x-should-retry"] = "false"
    return out


@dataclass(frozen=True)
class Target:
    """The session a request's turn goes to."""

    session_id: str
    conv: Any
    turn_index: int  # the index the new turn must get (the Dialogue API refuses any other: ABORTED)
    memory_key: str | None = None  # opened on history soma had not seen: remembered by this process
    opened: bool = False  # opened by this request: closed again if its first turn fails


class Recognizer:
    """digest of a resent history -> session, for the sessions this process opened on a history soma
    had not seen (its earlier turns went into the system prompt, so the stored transcript cannot
    match what the client resends). In this process's memory, bounded, least recently used first
    out; every other session is found by its stored transcript (DialogueService.FindSession)."""

    def __init__(self, capacity: int = 100_000):
        self.capacity = capacity
        self._map: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def find(self, digest: str) -> str | None:
        with self._lock:
            sid = self._map.get(digest)
            if sid is not None:
                self._map.move_to_end(digest)
            return sid

    def remember(self, digest: str, session_id: str, forget: str | None = None) -> None:
        with self._lock:
            if forget is not None:
                self._map.pop(forget, None)
            self._map[digest] = session_id
            self._map.move_to_end(digest)
            while len(self._map) > self.capacity:
                self._map.popitem(last=False)


def _number(body: dict, name: str, kind: type, low: float, high: float) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise BadRequest(f"{name} must be a{'n integer' if kind is int else ' number'}", param=name)
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}", param=name)
    return kind(value)


def _params(body: dict) -> dict:
    max_tokens = _number(body, "max_completion_tokens", int, 1, 1 << 20) or _number(body, "max_tokens", int, 1, 1 << 20)
    params: dict[str, Any] = {"max_new_tokens": max_tokens or 0}
    temperature = _number(body, "temperature", float, 0, 2)
    top_p = _number(body, "top_p", float, 0, 1)
    seed = _number(body, "seed", int, 0, (1 << 63) - 1)
    if temperature is not None:
        params["temperature"] = temperature
    if top_p is not None:
        params["top_p"] = top_p
    if seed is not None:
        params["seed"] = seed
    return params


def with_earlier_turns(system: str, prior, limit: int) -> str:
    """The system prompt of a session opened on history soma never saw: the client's own, then as
    many of the latest earlier turns as fit in `limit` characters (dialogue.max_system_prompt_chars)."""
    head = f"{system}\n\nThe conversation so far:\n" if system else "The conversation so far:\n"
    kept: list[str] = []
    room = limit - len(head)
    for user, assistant in reversed(prior):
        turn = f"User: {user}\nAssistant: {assistant}"
        if len(turn) + 1 > room:
            break
        kept.append(turn)
        room -= len(turn) + 1
    return head + "\n".join(reversed(kept)) if kept else system


def create_app(
    channel: grpc.Channel,
    models: list[str],
    max_message_chars: int,
    recognizer: Recognizer | None = None,
    clock: Callable[[], float] = time.time,
    *,
    auth_required: bool = True,
    max_body_bytes: int = 16 << 20,
    max_system_chars: int = 16_000,
) -> FastAPI:
    """The door, calling the Dialogue API over `channel`. `models`: the ids a client may pass
    (`soma` first); every one is served by soma's routing."""
    stub = dialogue_pb2_grpc.DialogueServiceStub(channel)
    recognizer = recognizer or Recognizer()
    app = FastAPI(title="soma OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(HttpError)
    async def http_error(_request: Request, err: HttpError):
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    def metadata(request: Request) -> list[tuple[str, str]]:
        auth = request.headers.get("authorization", "")
        return [("authorization", auth)] if auth else []

    @app.get("/v1/models")
    def list_models(request: Request):
        try:  # the key is checked as the Dialogue API checks it: an unknown session is NOT_FOUND for a good key
            stub.GetSession(dialogue_pb2.GetSessionRequest(session_id="soma-key-check"), metadata=metadata(request))
        except grpc.RpcError as err:
            if err.code() is not grpc.StatusCode.NOT_FOUND:
                raise from_rpc(err) from None
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "soma"} for m in models]
        return {"object": "list", "data": data}

    def session_for(request: Request, body: dict, meta) -> Target:
        conv = parse_messages(body.get("messages"), max_message_chars)
        scope = request.headers.get("authorization", "")
        wanted = request.headers.get("x-session-id", "").strip()
        if wanted:
            try:
                reply = stub.GetSession(
                    dialogue_pb2.GetSessionRequest(session_id=wanted, include_transcript=True), metadata=meta
                )
                stored = [(t.query, t.answer) for t in reply.transcript]
            except grpc.RpcError as err:
                if err.code() is not grpc.StatusCode.NOT_FOUND:
                    raise from_rpc(err) from None
                stored = None
            why = contradiction(conv.prior, stored or [])
            if stored is not None and conv.system and conv.system != reply.session.system_prompt:
                why = "the system message differs from the session's system prompt"
            if why:
                raise HttpError(409, f"session {wanted!r}: {why}", "conflict_error", "messages", "history_conflict")
            if stored is None:
                request_ = dialogue_pb2.OpenSessionRequest(session_id=wanted, system_prompt=conv.system)
                try:
                    stub.OpenSession(request_, metadata=meta)
                except grpc.RpcError as err:
                    raise from_rpc(err) from None
                return Target(wanted, conv, 1, opened=True)
            return Target(wanted, conv, len(stored) + 1)
        digest = history_digest(conv.system, conv.prior)
        local = history_key(scope, digest)  # this process's memory, for sessions opened on unseen history
        if conv.prior:
            try:
                found = stub.FindSession(dialogue_pb2.FindSessionRequest(history_digest=digest), metadata=meta)
                return Target(found.session.session_id, conv, len(conv.prior) + 1)
            except grpc.RpcError as err:
                if err.code() is not grpc.StatusCode.NOT_FOUND:
                    raise from_rpc(err) from None
            remembered = recognizer.find(local)
            if remembered is not None:
                try:
                    state = stub.GetSession(dialogue_pb2.GetSessionRequest(session_id=remembered), metadata=meta)
                    return Target(remembered, conv, state.session.turn_count + 1, memory_key=local)
                except grpc.RpcError as err:
                    if err.code() is not grpc.StatusCode.NOT_FOUND:
                        raise from_rpc(err) from None  # closed or expired meanwhile: a new session below
        system = conv.system
        if conv.prior:  # history soma never saw (a conversation begun elsewhere): kept as context
            system = with_earlier_turns(conv.system, conv.prior, max_system_chars)
        try:
            opened = stub.OpenSession(dialogue_pb2.OpenSessionRequest(system_prompt=system), metadata=meta)
        except grpc.RpcError as err:
            raise from_rpc(err) from None
        return Target(opened.session.session_id, conv, 1, memory_key=local if conv.prior else None, opened=True)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        if auth_required and not request.headers.get("authorization"):
            raise HttpError(401, "no API key: send Authorization: Bearer <key>", "authentication_error")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body_bytes:
            raise HttpError(413, f"the body is over {max_body_bytes} bytes", "invalid_request_error")
        raw = bytearray()
        async for part in request.stream():
            raw += part
            if len(raw) > max_body_bytes:
                raise HttpError(413, f"the body is over {max_body_bytes} bytes", "invalid_request_error")
        try:
            body = json.loads(raw)
        except ValueError:
            raise HttpError(400, "the body is not valid JSON", "invalid_request_error", code="invalid_json") from None
        if not isinstance(body, dict):
            raise HttpError(400, "the body must be a JSON object", "invalid_request_error")
        model = body.get("model")
        if not model:
            raise HttpError(400, "model is required", "invalid_request_error", "model")
        if model not in models:
            raise HttpError(
                404,
                f"the model {model!r} does not exist; use one of {models}",
                "invalid_request_error",
                "model",
                "model_not_found",
            )
        try:
            check_supported(body)
            params = _params(body)
            stream = bool(body.get("stream", False))
            options = body.get("stream_options") or {}
            include_usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
        except BadRequest as err:
            raise HttpError(400, str(err), "invalid_request_error", err.param, err.code) from None
        from starlette.concurrency import run_in_threadpool

        calls: list = []  # the turn's Chat call, once started
        work = asyncio.ensure_future(
            run_in_threadpool(turn, request, body, model, params, stream, include_usage, calls)
        )
        while True:
            done, _ = await asyncio.wait({work}, timeout=DISCONNECT_POLL_S)
            if done:
                return work.result()
            if await request.is_disconnected():
                # the client left before its answer began (or, not streaming, before it was whole):
                # the turn it will never read is cancelled, so it is not stored in its session
                for call in calls:
                    call.cancel()
                with contextlib.suppress(Exception):
                    await work
                return Response(status_code=499)  # nobody reads it; the access log shows the reason

    def turn(request: Request, body: dict, model: str, params: dict, stream: bool, include_usage: bool, calls: list):
        meta = metadata(request)
        try:
            target = session_for(request, body, meta)
        except BadRequest as err:
            raise HttpError(400, str(err), "invalid_request_error", err.param, err.code) from None
        session_id, conv, digest = target.session_id, target.conv, target.memory_key
        scope = request.headers.get("authorization", "")
        chat = stub.Chat(
            dialogue_pb2.ChatRequest(
                session_id=session_id,
                query=conv.query,
                params=common_pb2.GenerationParams(**params),
                turn_index=target.turn_index,  # a concurrent or repeated request cannot store a turn twice
            ),
            metadata=meta,
        )
        calls.append(chat)
        events = iter(chat)

        def failed(err: grpc.RpcError) -> HttpError:
            """The error, after closing a session this request opened and left without a turn."""
            if target.opened:
                try:
                    stub.CloseSession(dialogue_pb2.CloseSessionRequest(session_id=session_id), metadata=meta)
                except grpc.RpcError:
                    pass  # the idle TTL erases it
            return from_rpc(err)

        try:
            first = next(events, None)  # an error before the first token is still an HTTP status
        except grpc.RpcError as err:
            raise failed(err) from None
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(clock())
        headers = {"x-session-id": session_id}
        if first is not None and first.HasField("chunk") and first.chunk.served_by in SERVED_BY:
            headers["x-soma-served-by"] = SERVED_BY[first.chunk.served_by]  # streaming too: known from chunk one

        def remember(answer: str) -> None:
            if digest is None:
                return  # found by its stored transcript next time
            turns = (*conv.prior, (conv.query, answer))
            recognizer.remember(history_key(scope, history_digest(conv.system, turns)), session_id, forget=digest)

        def soma_field(record) -> dict:
            return {
                "session_id": session_id,
                "served_by": SERVED_BY.get(record.served_by, "unknown"),
                "turn_index": record.turn_index,
                "phase": common_pb2.SessionPhase.Name(record.phase).removeprefix("SESSION_PHASE_").lower(),
            }

        def usage(record) -> dict:
            return {
                "prompt_tokens": record.prompt_tokens,
                "completion_tokens": record.completion_tokens,
                "total_tokens": record.prompt_tokens + record.completion_tokens,
            }

        def all_events() -> Iterator:
            if first is not None:
                yield first
            yield from events

        if not stream:
            texts, record = [], None
            try:
                for event in all_events():
                    if event.HasField("chunk"):
                        texts.append(event.chunk.text)
                    elif event.HasField("turn"):
                        record = event.turn
            except grpc.RpcError as err:
                raise failed(err) from None
            finally:
                chat.cancel()  # no-op once the turn is done
            answer = "".join(texts)
            remember(answer)
            headers["x-soma-served-by"] = SERVED_BY.get(record.served_by, "unknown")
            return JSONResponse(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": answer},
                            "finish_reason": FINISH.get(record.finish_reason, "stop"),
                        }
                    ],
                    "usage": usage(record),
                    "soma": soma_field(record),
                },
                headers=headers,
            )

        def chunk(delta: dict, finish: str | None = None, **extra) -> str:
            payload = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
            return f"data: {json.dumps(payload)}\n\n"

        def sse() -> Iterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            texts = []
            try:
                for event in all_events():
                    if event.HasField("chunk"):
                        texts.append(event.chunk.text)
                        yield chunk({"content": event.chunk.text})
                    elif event.HasField("turn"):
                        record = event.turn
                        remember("".join(texts))
                        yield chunk({}, FINISH.get(record.finish_reason, "stop"), soma=soma_field(record))
                        if include_usage:
                            payload = {
                                "id": cid,
                                "object": "chat.completion.chunk",
                                "created": created,
                                "model": model,
                                "choices": [],
                                "usage": usage(record),
                            }
                            yield f"data: {json.dumps(payload)}\n\n"
            except grpc.RpcError as err:
                yield f"data: {json.dumps(failed(err).body())}\n\n"
            finally:
                chat.cancel()  # the client left mid-stream: the turn it never received is not stored
            yield "data: [DONE]\n\n"

        return StreamingResponse(_cancelled_on_exit(sse(), chat), media_type="text/event-stream", headers=headers)

    return app
