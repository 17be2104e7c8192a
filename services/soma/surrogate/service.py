"""SurrogateService: streams G's answer to a chat, with the session's LoRA adapter when one is named.

Adapters come from the adapter store (sha256-verified, safetensors only) through an LRU cache
on this replica. A turn pins its adapter while it streams, so eviction cannot pull it from under
the turn, and holds no cache lock, so other sessions' turns run beside it (on vLLM, batched).
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from soma.config import SurrogateSettings
from soma.errors import FailedPrecondition, SomaError
from soma.server.app import HostedService
from soma.server.generation import stream_generation
from soma.surrogate.adapter_cache import AdapterCache
from soma.telemetry.metrics import ADAPTER_CACHE
from soma.v1 import surrogate_pb2, surrogate_pb2_grpc
from soma.wire import messages_from_proto, sampling_from_proto


class SurrogateServicer(surrogate_pb2_grpc.SurrogateServiceServicer):
    def __init__(self, backend: object, settings: SurrogateSettings, cache: AdapterCache | None = None):
        self.backend = backend
        self.settings = settings
        self.cache = cache

    def _stream(self, messages, sampling, context):
        return stream_generation(
            self.backend, "surrogate", messages, sampling, context, surrogate_pb2.SurrogateServiceGenerateResponse
        )

    def Generate(
        self, request: surrogate_pb2.SurrogateServiceGenerateRequest, context: grpc.ServicerContext
    ) -> Iterator[surrogate_pb2.SurrogateServiceGenerateResponse]:
        messages = messages_from_proto(request.messages)
        sampling = sampling_from_proto(request.params, self.settings)
        if self.cache is None:
            if request.HasField("adapter"):
                ref = request.adapter
                raise FailedPrecondition(
                    f"adapter {ref.session_id}/{ref.generation} requested, but this surrogate has no adapter store "
                    "configured; omit the adapter to use the base model"
                )
            yield from self._stream(messages, sampling, context)
            return
        name = None
        if request.HasField("adapter"):
            try:
                name, hit = self.cache.pin(request.adapter.session_id, request.adapter.generation)
            except SomaError:
                ADAPTER_CACHE.labels("error").inc()
                raise
            ADAPTER_CACHE.labels("hit" if hit else "miss").inc()
        try:
            with self.cache.adapters.using(name):
                yield from self._stream(messages, sampling, context)
        finally:
            if name is not None:
                self.cache.release(name)


def hosted(backend: object, settings: SurrogateSettings, cache: AdapterCache | None = None) -> HostedService:
    servicer = SurrogateServicer(backend, settings, cache)
    return HostedService(
        name=surrogate_pb2.DESCRIPTOR.services_by_name["SurrogateService"].full_name,
        register=lambda server: surrogate_pb2_grpc.add_SurrogateServiceServicer_to_server(servicer, server),
    )
