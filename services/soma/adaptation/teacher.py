"""GrpcTeacher: a TeacherClient over the TeacherService gRPC API (the mining job asks F)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from soma.algo.teacher_client import Completion, Message
from soma.errors import Unavailable
from soma.telemetry.tracing import traced_channel
from soma.v1 import common_pb2, teacher_pb2, teacher_pb2_grpc
from soma.wire import finish_from_proto, messages_to_proto


class GrpcTeacher:
    def __init__(self, address: str, *, timeout_s: float = 600.0, service_token: str = ""):
        if not address:
            raise ValueError("the teacher address is empty: set jobs.teacher_address (host:port)")
        self.address = address
        self.timeout_s = timeout_s
        self._channel = traced_channel(address, service_token=service_token)  # a collected channel closes
        self._stub = teacher_pb2_grpc.TeacherServiceStub(self._channel)

    def complete(self, conversations: Sequence[Sequence[Message]], max_new_tokens: int) -> list[Completion]:
        out = []
        for messages in conversations:
            request = teacher_pb2.TeacherServiceGenerateRequest(
                messages=messages_to_proto(list(messages)),
                params=common_pb2.GenerationParams(max_new_tokens=max_new_tokens),
            )
            try:
                result = None
                for response in self._stub.Generate(request, timeout=self.timeout_s):
                    if response.HasField("result"):
                        result = response.result
            except grpc.RpcError as err:
                if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise Unavailable(f"teacher at {self.address} is unavailable: {err.details()}") from err
                raise
            if result is None:
                raise Unavailable(f"teacher at {self.address} ended the stream without a result")
            out.append(
                Completion(
                    result.text,
                    result.prompt_tokens,
                    result.completion_tokens,
                    finish_from_proto(result.finish_reason),
                )
            )
        return out

    def close(self) -> None:
        self._channel.close()
