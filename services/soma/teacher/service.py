"""TeacherService: streams F's answer to a chat."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from soma.config import TeacherSettings
from soma.server.app import HostedService
from soma.server.generation import stream_generation
from soma.v1 import teacher_pb2, teacher_pb2_grpc
from soma.wire import messages_from_proto, sampling_from_proto


class TeacherServicer(teacher_pb2_grpc.TeacherServiceServicer):
    def __init__(self, backend: object, settings: TeacherSettings):
        self.backend = backend
        self.settings = settings

    def Generate(
        self, request: teacher_pb2.TeacherServiceGenerateRequest, context: grpc.ServicerContext
    ) -> Iterator[teacher_pb2.TeacherServiceGenerateResponse]:
        messages = messages_from_proto(request.messages)
        sampling = sampling_from_proto(request.params, self.settings)
        yield from stream_generation(
            self.backend, "teacher", messages, sampling, context, teacher_pb2.TeacherServiceGenerateResponse
        )


def hosted(backend: object, settings: TeacherSettings) -> HostedService:
    servicer = TeacherServicer(backend, settings)
    return HostedService(
        name=teacher_pb2.DESCRIPTOR.services_by_name["TeacherService"].full_name,
        register=lambda server: teacher_pb2_grpc.add_TeacherServiceServicer_to_server(servicer, server),
    )
