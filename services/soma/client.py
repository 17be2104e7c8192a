"""A small Python client for the Dialogue API, used by `soma chat`, the demo and benchmarks."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.experimental
from grpc_health.v1 import health_pb2, health_pb2_grpc

from soma.call_metadata import AddMetadata
from soma.v1 import common_pb2, dialogue_pb2, dialogue_pb2_grpc


def default_api_key() -> str:
    """SOMA_API_KEY, else the local key an embedded server made under the default state folder."""
    import os

    from soma.paths import default_state_dir

    if os.environ.get("SOMA_API_KEY"):
        return os.environ["SOMA_API_KEY"].strip()
    local = default_state_dir() / "api-key"
    return local.read_text().strip() if local.is_file() else ""


def open_channel(
    address: str, api_key: str | None = None, *, tls_root_cert: Path | None = None, options=()
) -> grpc.Channel:
    """A channel to a soma server that sends the API key with every call (None: `default_api_key()`,
    "" : no key) and speaks TLS when a root certificate is given."""
    key = default_api_key() if api_key is None else api_key
    if tls_root_cert is not None:
        channel = grpc.secure_channel(
            address, grpc.ssl_channel_credentials(Path(tls_root_cert).read_bytes()), options=list(options)
        )
    else:
        channel = grpc.insecure_channel(address, options=list(options))
    if not key:
        return channel
    return _KeyedChannel(grpc.intercept_channel(channel, AddMetadata("authorization", f"Bearer {key}")), channel)


class _KeyedChannel(grpc.Channel):
    """An intercepted channel that closes the channel under it."""

    def __init__(self, intercepted: grpc.Channel, raw: grpc.Channel):
        self._intercepted, self._raw = intercepted, raw

    def subscribe(self, callback, try_to_connect=False):
        return self._intercepted.subscribe(callback, try_to_connect)

    def unsubscribe(self, callback):
        return self._intercepted.unsubscribe(callback)

    def unary_unary(self, *args, **kwargs):
        return self._intercepted.unary_unary(*args, **kwargs)

    def unary_stream(self, *args, **kwargs):
        return self._intercepted.unary_stream(*args, **kwargs)

    def stream_unary(self, *args, **kwargs):
        return self._intercepted.stream_unary(*args, **kwargs)

    def stream_stream(self, *args, **kwargs):
        return self._intercepted.stream_stream(*args, **kwargs)

    def close(self):
        self._raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def wait_healthy(address: str, service: str = "", timeout: float = 120.0) -> None:
    """Block until the server at address reports SERVING for service ("" = the server)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
            except grpc.RpcError as err:
                last = f"{err.code().name}: {err.details()}"
            time.sleep(0.2)
    raise TimeoutError(f"{address} not healthy after {timeout:.0f}s ({last})")


@dataclass
class TurnResult:
    """One answered turn as the client saw it; client_latency_ms runs from sending the
    request to receiving the turn record."""

    text: str
    record: common_pb2.TurnRecord
    client_latency_ms: float
    first_chunk_ms: float | None

    def as_json(self) -> dict:
        return {
            "turn": self.record.turn_index,
            "served_by": common_pb2.ServedBy.Name(self.record.served_by).removeprefix("SERVED_BY_"),
            "phase": common_pb2.SessionPhase.Name(self.record.phase).removeprefix("SESSION_PHASE_"),
            "latency_ms": round(self.record.latency_ms, 1),
            "prompt_tokens": self.record.prompt_tokens,
            "completion_tokens": self.record.completion_tokens,
            "text": self.text,
        }


class DialogueClient:
    def __init__(self, address: str, api_key: str | None = None, *, tls_root_cert: Path | None = None):
        """`api_key` None: SOMA_API_KEY, else the local key of an embedded server (`default_api_key`)."""
        self.address = address
        # Streamed answers are read on the calling thread (no handoff per chunk).
        self._channel = open_channel(
            address,
            api_key,
            tls_root_cert=tls_root_cert,
            options=[(grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1)],
        )
        self.stub = dialogue_pb2_grpc.DialogueServiceStub(self._channel)

    @property
    def channel(self) -> grpc.Channel:
        """The channel, for stubs of the server's other services (mining, training, ...)."""
        return self._channel

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> DialogueClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open_session(
        self, session_id: str = "", system_prompt: str = "", labels: dict | None = None
    ) -> dialogue_pb2.Session:
        request = dialogue_pb2.OpenSessionRequest(
            session_id=session_id, system_prompt=system_prompt, labels=labels or {}
        )
        return self.stub.OpenSession(request, timeout=30).session

    def stream(
        self, session_id: str, query: str, max_new_tokens: int = 0, temperature: float = 0.0
    ) -> Iterator[dialogue_pb2.ChatResponse]:
        params = common_pb2.GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature)
        yield from self.stub.Chat(dialogue_pb2.ChatRequest(session_id=session_id, query=query, params=params))

    def chat(
        self, session_id: str, query: str, max_new_tokens: int = 0, temperature: float = 0.0, on_chunk=None
    ) -> TurnResult:
        started = time.perf_counter()
        first = None
        parts: list[str] = []
        record = None
        for response in self.stream(session_id, query, max_new_tokens, temperature):
            if response.HasField("chunk"):
                if first is None:
                    first = (time.perf_counter() - started) * 1000.0
                parts.append(response.chunk.text)
                if on_chunk:
                    on_chunk(response.chunk.text)
            else:
                record = response.turn
                # The turn is complete for the user when its record arrives; the stream's
                # closing status follows it.
                finished = time.perf_counter()
        if record is None:
            raise RuntimeError("the server ended the turn without a turn record")
        return TurnResult("".join(parts), record, (finished - started) * 1000.0, first)

    def get_session(self, session_id: str, include_transcript: bool = False) -> dialogue_pb2.GetSessionResponse:
        return self.stub.GetSession(
            dialogue_pb2.GetSessionRequest(session_id=session_id, include_transcript=include_transcript), timeout=30
        )

    def close_session(self, session_id: str) -> dialogue_pb2.Session:
        return self.stub.CloseSession(dialogue_pb2.CloseSessionRequest(session_id=session_id), timeout=30).session


def load_user_turns(path: Path) -> list[str]:
    """User turns of a script: JSON Lines in the shared data schema (first dialogue) or one per line."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path} holds no turns")
    first = lines[0].lstrip()
    if first.startswith("{"):
        try:
            dialogue = json.loads(first)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: first line looks like JSON but does not parse: {err}") from None
        turns = dialogue.get("turns")
        if not isinstance(turns, list) or not all(
            isinstance(t, dict) and isinstance(t.get("user"), str) for t in turns
        ):
            raise ValueError(f'{path}: expected {{"turns": [{{"user": ...}}, ...]}} on the first line')
        return [t["user"] for t in turns]
    return lines
