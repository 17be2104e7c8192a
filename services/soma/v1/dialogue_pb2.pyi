import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from soma.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OpenSessionRequest(_message.Message):
    __slots__ = ("session_id", "system_prompt", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    system_prompt: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, session_id: _Optional[str] = ..., system_prompt: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class OpenSessionResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: Session
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ...) -> None: ...

class ChatRequest(_message.Message):
    __slots__ = ("session_id", "query", "params", "turn_index")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    TURN_INDEX_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    query: str
    params: _common_pb2.GenerationParams
    turn_index: int
    def __init__(self, session_id: _Optional[str] = ..., query: _Optional[str] = ..., params: _Optional[_Union[_common_pb2.GenerationParams, _Mapping]] = ..., turn_index: _Optional[int] = ...) -> None: ...

class ChatResponse(_message.Message):
    __slots__ = ("chunk", "turn")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    chunk: _common_pb2.TextChunk
    turn: _common_pb2.TurnRecord
    def __init__(self, chunk: _Optional[_Union[_common_pb2.TextChunk, _Mapping]] = ..., turn: _Optional[_Union[_common_pb2.TurnRecord, _Mapping]] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_id", "include_transcript")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    include_transcript: bool
    def __init__(self, session_id: _Optional[str] = ..., include_transcript: _Optional[bool] = ...) -> None: ...

class GetSessionResponse(_message.Message):
    __slots__ = ("session", "transcript")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    session: Session
    transcript: _containers.RepeatedCompositeFieldContainer[TranscriptTurn]
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ..., transcript: _Optional[_Iterable[_Union[TranscriptTurn, _Mapping]]] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: Session
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("session_id", "phase", "created_at", "updated_at", "turn_count", "teacher_turns", "surrogate_turns", "adapter_generation", "system_prompt", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    TURN_COUNT_FIELD_NUMBER: _ClassVar[int]
    TEACHER_TURNS_FIELD_NUMBER: _ClassVar[int]
    SURROGATE_TURNS_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_GENERATION_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    phase: _common_pb2.SessionPhase
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    turn_count: int
    teacher_turns: int
    surrogate_turns: int
    adapter_generation: int
    system_prompt: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, session_id: _Optional[str] = ..., phase: _Optional[_Union[_common_pb2.SessionPhase, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., turn_count: _Optional[int] = ..., teacher_turns: _Optional[int] = ..., surrogate_turns: _Optional[int] = ..., adapter_generation: _Optional[int] = ..., system_prompt: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class TranscriptTurn(_message.Message):
    __slots__ = ("query", "answer", "record")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    query: str
    answer: str
    record: _common_pb2.TurnRecord
    def __init__(self, query: _Optional[str] = ..., answer: _Optional[str] = ..., record: _Optional[_Union[_common_pb2.TurnRecord, _Mapping]] = ...) -> None: ...

class FindSessionRequest(_message.Message):
    __slots__ = ("history_digest",)
    HISTORY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    history_digest: str
    def __init__(self, history_digest: _Optional[str] = ...) -> None: ...

class FindSessionResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: Session
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ...) -> None: ...
