"""SurrogateService: streams G's answer to a chat.

Per-session LoRA adapters come with the adapter store (live adaptation); until a store is
configured, a request that names an adapter is refused with FAILED_PRECONDITION rather than
silently answered by the base model.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from soma.config import SurrogateSettings
from soma.errors import FailedPrecondition
from soma.server.app import HostedService
from soma.server.generation import messages_from_proto, sampling_from_proto, stream_generation
from soma.v1 import surrogate_pb2, surrogate_pb2_grpc


class SurrogateServicer(surrogate_pb2_grpc.SurrogateServiceServicer):
    def __init__(self, backend: object, settings: SurrogateSettings):
        self.backend = backend
        self.settings = settings

    def Generate(
        self, request: surrogate_pb2.SurrogateServiceGenerateRequest, context: grpc.ServicerContext
    ) -> Iterator[surrogate_pb2.SurrogateServiceGenerateResponse]:
        messages = messages_from_proto(request.messages)
        sampling = sampling_from_proto(request.params, self.settings)
        if request.HasField("adapter"):
            ref = request.adapter
            raise FailedPrecondition(
                f"adapter {ref.session_id}/{ref.generation} requested, but this surrogate has no "
                "adapter store configured; omit the adapter to use the base model"
            )
        yield from stream_generation(
            self.backend,
            "surrogate",
            messages,
            sampling,
            context,
            surrogate_pb2.SurrogateServiceGenerateResponse,
        )


def hosted(backend: object, settings: SurrogateSettings) -> HostedService:
    servicer = SurrogateServicer(backend, settings)
    return HostedService(
        name=surrogate_pb2.DESCRIPTOR.services_by_name["SurrogateService"].full_name,
        register=lambda server: surrogate_pb2_grpc.add_SurrogateServiceServicer_to_server(servicer, server),
    )
