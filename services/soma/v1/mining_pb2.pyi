from soma.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubmitMiningJobRequest(_message.Message):
    __slots__ = ("session_id", "generation", "warm_turns", "generation_token")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    WARM_TURNS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    generation: int
    warm_turns: _containers.RepeatedCompositeFieldContainer[_common_pb2.WarmTurn]
    generation_token: str
    def __init__(self, session_id: _Optional[str] = ..., generation: _Optional[int] = ..., warm_turns: _Optional[_Iterable[_Union[_common_pb2.WarmTurn, _Mapping]]] = ..., generation_token: _Optional[str] = ...) -> None: ...

class SubmitMiningJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.JobStatus
    def __init__(self, job: _Optional[_Union[_common_pb2.JobStatus, _Mapping]] = ...) -> None: ...

class GetMiningJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class MinedCase(_message.Message):
    __slots__ = ("turn_index", "verbalized_prompt", "teacher_answer", "hardness", "finish_reason")
    TURN_INDEX_FIELD_NUMBER: _ClassVar[int]
    VERBALIZED_PROMPT_FIELD_NUMBER: _ClassVar[int]
    TEACHER_ANSWER_FIELD_NUMBER: _ClassVar[int]
    HARDNESS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    turn_index: int
    verbalized_prompt: str
    teacher_answer: str
    hardness: float
    finish_reason: _common_pb2.FinishReason
    def __init__(self, turn_index: _Optional[int] = ..., verbalized_prompt: _Optional[str] = ..., teacher_answer: _Optional[str] = ..., hardness: _Optional[float] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ...) -> None: ...

class GetMiningJobResponse(_message.Message):
    __slots__ = ("job", "cases", "warm_hardness")
    JOB_FIELD_NUMBER: _ClassVar[int]
    CASES_FIELD_NUMBER: _ClassVar[int]
    WARM_HARDNESS_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.JobStatus
    cases: _containers.RepeatedCompositeFieldContainer[MinedCase]
    warm_hardness: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, job: _Optional[_Union[_common_pb2.JobStatus, _Mapping]] = ..., cases: _Optional[_Iterable[_Union[MinedCase, _Mapping]]] = ..., warm_hardness: _Optional[_Iterable[float]] = ...) -> None: ...

class WatchMiningJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchMiningJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.JobStatus
    def __init__(self, job: _Optional[_Union[_common_pb2.JobStatus, _Mapping]] = ...) -> None: ...
