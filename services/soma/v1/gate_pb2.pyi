from soma.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Bound(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BOUND_UNSPECIFIED: _ClassVar[Bound]
    BOUND_HOEFFDING: _ClassVar[Bound]
    BOUND_BERNSTEIN: _ClassVar[Bound]
    BOUND_NONE: _ClassVar[Bound]

class SummaryPlace(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SUMMARY_PLACE_UNSPECIFIED: _ClassVar[SummaryPlace]
    SUMMARY_PLACE_FIRST_USER: _ClassVar[SummaryPlace]
    SUMMARY_PLACE_SYSTEM: _ClassVar[SummaryPlace]
BOUND_UNSPECIFIED: Bound
BOUND_HOEFFDING: Bound
BOUND_BERNSTEIN: Bound
BOUND_NONE: Bound
SUMMARY_PLACE_UNSPECIFIED: SummaryPlace
SUMMARY_PLACE_FIRST_USER: SummaryPlace
SUMMARY_PLACE_SYSTEM: SummaryPlace

class AnswerPair(_message.Message):
    __slots__ = ("a", "b")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    a: str
    b: str
    def __init__(self, a: _Optional[str] = ..., b: _Optional[str] = ...) -> None: ...

class GapRequest(_message.Message):
    __slots__ = ("pairs",)
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    pairs: _containers.RepeatedCompositeFieldContainer[AnswerPair]
    def __init__(self, pairs: _Optional[_Iterable[_Union[AnswerPair, _Mapping]]] = ...) -> None: ...

class GapResponse(_message.Message):
    __slots__ = ("gaps",)
    GAPS_FIELD_NUMBER: _ClassVar[int]
    gaps: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, gaps: _Optional[_Iterable[float]] = ...) -> None: ...

class AcceptanceExample(_message.Message):
    __slots__ = ("teacher_answer", "old_answer", "new_answer")
    TEACHER_ANSWER_FIELD_NUMBER: _ClassVar[int]
    OLD_ANSWER_FIELD_NUMBER: _ClassVar[int]
    NEW_ANSWER_FIELD_NUMBER: _ClassVar[int]
    teacher_answer: str
    old_answer: str
    new_answer: str
    def __init__(self, teacher_answer: _Optional[str] = ..., old_answer: _Optional[str] = ..., new_answer: _Optional[str] = ...) -> None: ...

class AcceptRequest(_message.Message):
    __slots__ = ("session_id", "batch", "epsilon", "delta", "bound", "max_mean_gap", "current_query", "warm_queries", "min_locality")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    BOUND_FIELD_NUMBER: _ClassVar[int]
    MAX_MEAN_GAP_FIELD_NUMBER: _ClassVar[int]
    CURRENT_QUERY_FIELD_NUMBER: _ClassVar[int]
    WARM_QUERIES_FIELD_NUMBER: _ClassVar[int]
    MIN_LOCALITY_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    batch: _containers.RepeatedCompositeFieldContainer[AcceptanceExample]
    epsilon: float
    delta: float
    bound: Bound
    max_mean_gap: float
    current_query: str
    warm_queries: _containers.RepeatedScalarFieldContainer[str]
    min_locality: float
    def __init__(self, session_id: _Optional[str] = ..., batch: _Optional[_Iterable[_Union[AcceptanceExample, _Mapping]]] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., bound: _Optional[_Union[Bound, str]] = ..., max_mean_gap: _Optional[float] = ..., current_query: _Optional[str] = ..., warm_queries: _Optional[_Iterable[str]] = ..., min_locality: _Optional[float] = ...) -> None: ...

class AcceptResponse(_message.Message):
    __slots__ = ("accepted", "mean_improvement", "bound", "mean_gap_new", "locality", "reason")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    MEAN_IMPROVEMENT_FIELD_NUMBER: _ClassVar[int]
    BOUND_FIELD_NUMBER: _ClassVar[int]
    MEAN_GAP_NEW_FIELD_NUMBER: _ClassVar[int]
    LOCALITY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    mean_improvement: float
    bound: float
    mean_gap_new: float
    locality: float
    reason: str
    def __init__(self, accepted: _Optional[bool] = ..., mean_improvement: _Optional[float] = ..., bound: _Optional[float] = ..., mean_gap_new: _Optional[float] = ..., locality: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class ObserveTurnRequest(_message.Message):
    __slots__ = ("session_id", "query", "warm_queries", "min_locality", "shadow", "max_gap")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    WARM_QUERIES_FIELD_NUMBER: _ClassVar[int]
    MIN_LOCALITY_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    MAX_GAP_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    query: str
    warm_queries: _containers.RepeatedScalarFieldContainer[str]
    min_locality: float
    shadow: AnswerPair
    max_gap: float
    def __init__(self, session_id: _Optional[str] = ..., query: _Optional[str] = ..., warm_queries: _Optional[_Iterable[str]] = ..., min_locality: _Optional[float] = ..., shadow: _Optional[_Union[AnswerPair, _Mapping]] = ..., max_gap: _Optional[float] = ...) -> None: ...

class ObserveTurnResponse(_message.Message):
    __slots__ = ("locality", "locality_ok", "gap", "gap_ok")
    LOCALITY_FIELD_NUMBER: _ClassVar[int]
    LOCALITY_OK_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    GAP_OK_FIELD_NUMBER: _ClassVar[int]
    locality: float
    locality_ok: bool
    gap: float
    gap_ok: bool
    def __init__(self, locality: _Optional[float] = ..., locality_ok: _Optional[bool] = ..., gap: _Optional[float] = ..., gap_ok: _Optional[bool] = ...) -> None: ...

class CompressRequest(_message.Message):
    __slots__ = ("system_prompt", "turns", "query", "recent_turns", "summary_chars", "summary_place", "max_summarized_turns", "observe")
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    TURNS_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    RECENT_TURNS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_CHARS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_PLACE_FIELD_NUMBER: _ClassVar[int]
    MAX_SUMMARIZED_TURNS_FIELD_NUMBER: _ClassVar[int]
    OBSERVE_FIELD_NUMBER: _ClassVar[int]
    system_prompt: str
    turns: _containers.RepeatedCompositeFieldContainer[AnswerPair]
    query: str
    recent_turns: int
    summary_chars: int
    summary_place: SummaryPlace
    max_summarized_turns: int
    observe: ObserveTurnRequest
    def __init__(self, system_prompt: _Optional[str] = ..., turns: _Optional[_Iterable[_Union[AnswerPair, _Mapping]]] = ..., query: _Optional[str] = ..., recent_turns: _Optional[int] = ..., summary_chars: _Optional[int] = ..., summary_place: _Optional[_Union[SummaryPlace, str]] = ..., max_summarized_turns: _Optional[int] = ..., observe: _Optional[_Union[ObserveTurnRequest, _Mapping]] = ...) -> None: ...

class CompressResponse(_message.Message):
    __slots__ = ("messages", "summarized_turns", "observed")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SUMMARIZED_TURNS_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.Message]
    summarized_turns: int
    observed: ObserveTurnResponse
    def __init__(self, messages: _Optional[_Iterable[_Union[_common_pb2.Message, _Mapping]]] = ..., summarized_turns: _Optional[int] = ..., observed: _Optional[_Union[ObserveTurnResponse, _Mapping]] = ...) -> None: ...
