from soma.v1 import common_pb2 as _common_pb2
from soma.v1 import gate_pb2 as _gate_pb2
from soma.v1 import mining_pb2 as _mining_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ForgetSessionJobsRequest(_message.Message):
    __slots__ = ("session_id", "up_to_generation", "generation_token")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    UP_TO_GENERATION_FIELD_NUMBER: _ClassVar[int]
    GENERATION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    up_to_generation: int
    generation_token: str
    def __init__(self, session_id: _Optional[str] = ..., up_to_generation: _Optional[int] = ..., generation_token: _Optional[str] = ...) -> None: ...

class ForgetSessionJobsResponse(_message.Message):
    __slots__ = ("forgotten",)
    FORGOTTEN_FIELD_NUMBER: _ClassVar[int]
    forgotten: int
    def __init__(self, forgotten: _Optional[int] = ...) -> None: ...

class SubmitTrainingJobRequest(_message.Message):
    __slots__ = ("session_id", "generation", "warm_turns", "mined_cases", "warm_hardness", "mining_job_id", "generation_token")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    WARM_TURNS_FIELD_NUMBER: _ClassVar[int]
    MINED_CASES_FIELD_NUMBER: _ClassVar[int]
    WARM_HARDNESS_FIELD_NUMBER: _ClassVar[int]
    MINING_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    generation: int
    warm_turns: _containers.RepeatedCompositeFieldContainer[_common_pb2.WarmTurn]
    mined_cases: _containers.RepeatedCompositeFieldContainer[_mining_pb2.MinedCase]
    warm_hardness: _containers.RepeatedScalarFieldContainer[float]
    mining_job_id: str
    generation_token: str
    def __init__(self, session_id: _Optional[str] = ..., generation: _Optional[int] = ..., warm_turns: _Optional[_Iterable[_Union[_common_pb2.WarmTurn, _Mapping]]] = ..., mined_cases: _Optional[_Iterable[_Union[_mining_pb2.MinedCase, _Mapping]]] = ..., warm_hardness: _Optional[_Iterable[float]] = ..., mining_job_id: _Optional[str] = ..., generation_token: _Optional[str] = ...) -> None: ...

class SubmitTrainingJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.JobStatus
    def __init__(self, job: _Optional[_Union[_common_pb2.JobStatus, _Mapping]] = ...) -> None: ...

class GetTrainingJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class AdapterInfo(_message.Message):
    __slots__ = ("uri", "sha256", "base_model", "rank", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    URI_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    uri: str
    sha256: str
    base_model: str
    rank: int
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, uri: _Optional[str] = ..., sha256: _Optional[str] = ..., base_model: _Optional[str] = ..., rank: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class GetTrainingJobResponse(_message.Message):
    __slots__ = ("job", "adapter", "acceptance")
    JOB_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    ACCEPTANCE_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.JobStatus
    adapter: AdapterInfo
    acceptance: _containers.RepeatedCompositeFieldContainer[_gate_pb2.AcceptanceExample]
    def __init__(self, job: _Optional[_Union[_common_pb2.JobStatus, _Mapping]] = ..., adapter: _Optional[_Union[AdapterInfo, _Mapping]] = ..., acceptance: _Optional[_Iterable[_Union[_gate_pb2.AcceptanceExample, _Mapping]]] = ...) -> None: ...

class WatchTrainingJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchTrainingJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.JobStatus
    def __init__(self, job: _Optional[_Union[_common_pb2.JobStatus, _Mapping]] = ...) -> None: ...
