from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ServedBy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SERVED_BY_UNSPECIFIED: _ClassVar[ServedBy]
    SERVED_BY_TEACHER: _ClassVar[ServedBy]
    SERVED_BY_SURROGATE: _ClassVar[ServedBy]

class SessionPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SESSION_PHASE_UNSPECIFIED: _ClassVar[SessionPhase]
    SESSION_PHASE_WARMUP: _ClassVar[SessionPhase]
    SESSION_PHASE_ADAPTING: _ClassVar[SessionPhase]
    SESSION_PHASE_GATING: _ClassVar[SessionPhase]
    SESSION_PHASE_SURROGATE: _ClassVar[SessionPhase]
    SESSION_PHASE_ROLLED_BACK: _ClassVar[SessionPhase]
    SESSION_PHASE_CLOSED: _ClassVar[SessionPhase]
    SESSION_PHASE_FAILED: _ClassVar[SessionPhase]

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_SYSTEM: _ClassVar[Role]
    ROLE_USER: _ClassVar[Role]
    ROLE_ASSISTANT: _ClassVar[Role]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
SERVED_BY_UNSPECIFIED: ServedBy
SERVED_BY_TEACHER: ServedBy
SERVED_BY_SURROGATE: ServedBy
SESSION_PHASE_UNSPECIFIED: SessionPhase
SESSION_PHASE_WARMUP: SessionPhase
SESSION_PHASE_ADAPTING: SessionPhase
SESSION_PHASE_GATING: SessionPhase
SESSION_PHASE_SURROGATE: SessionPhase
SESSION_PHASE_ROLLED_BACK: SessionPhase
SESSION_PHASE_CLOSED: SessionPhase
SESSION_PHASE_FAILED: SessionPhase
ROLE_UNSPECIFIED: Role
ROLE_SYSTEM: Role
ROLE_USER: Role
ROLE_ASSISTANT: Role
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState

class Message(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: Role
    content: str
    def __init__(self, role: _Optional[_Union[Role, str]] = ..., content: _Optional[str] = ...) -> None: ...

class GenerationParams(_message.Message):
    __slots__ = ("max_new_tokens", "temperature", "top_p", "seed")
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    def __init__(self, max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class TextChunk(_message.Message):
    __slots__ = ("text", "served_by")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    text: str
    served_by: ServedBy
    def __init__(self, text: _Optional[str] = ..., served_by: _Optional[_Union[ServedBy, str]] = ...) -> None: ...

class GenerationResult(_message.Message):
    __slots__ = ("text", "finish_reason", "prompt_tokens", "completion_tokens", "model_latency_ms", "model", "dropped_messages")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MODEL_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DROPPED_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    model_latency_ms: float
    model: str
    dropped_messages: int
    def __init__(self, text: _Optional[str] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., model_latency_ms: _Optional[float] = ..., model: _Optional[str] = ..., dropped_messages: _Optional[int] = ...) -> None: ...

class TurnRecord(_message.Message):
    __slots__ = ("turn_index", "served_by", "route_reason", "phase", "prompt_tokens", "completion_tokens", "latency_ms", "model_latency_ms", "finish_reason", "dropped_messages")
    TURN_INDEX_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    ROUTE_REASON_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    DROPPED_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    turn_index: int
    served_by: ServedBy
    route_reason: str
    phase: SessionPhase
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    model_latency_ms: float
    finish_reason: FinishReason
    dropped_messages: int
    def __init__(self, turn_index: _Optional[int] = ..., served_by: _Optional[_Union[ServedBy, str]] = ..., route_reason: _Optional[str] = ..., phase: _Optional[_Union[SessionPhase, str]] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., latency_ms: _Optional[float] = ..., model_latency_ms: _Optional[float] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., dropped_messages: _Optional[int] = ...) -> None: ...

class WarmTurn(_message.Message):
    __slots__ = ("turn_index", "context", "teacher_answer", "teacher_finish_reason", "served_context")
    TURN_INDEX_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    TEACHER_ANSWER_FIELD_NUMBER: _ClassVar[int]
    TEACHER_FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    SERVED_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    turn_index: int
    context: _containers.RepeatedCompositeFieldContainer[Message]
    teacher_answer: str
    teacher_finish_reason: FinishReason
    served_context: _containers.RepeatedCompositeFieldContainer[Message]
    def __init__(self, turn_index: _Optional[int] = ..., context: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., teacher_answer: _Optional[str] = ..., teacher_finish_reason: _Optional[_Union[FinishReason, str]] = ..., served_context: _Optional[_Iterable[_Union[Message, _Mapping]]] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("job_id", "session_id", "generation", "state", "progress", "stage", "message", "attempt")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    session_id: str
    generation: int
    state: JobState
    progress: float
    stage: str
    message: str
    attempt: int
    def __init__(self, job_id: _Optional[str] = ..., session_id: _Optional[str] = ..., generation: _Optional[int] = ..., state: _Optional[_Union[JobState, str]] = ..., progress: _Optional[float] = ..., stage: _Optional[str] = ..., message: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...
