from google.protobuf import any_pb2 as _any_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from worker._proto.accounting.v1 import accounting_pb2 as _accounting_pb2
from worker._proto.jobs.v1 import jobs_pb2 as _jobs_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Voting(_message.Message):
    __slots__ = ("up", "down")
    UP_FIELD_NUMBER: _ClassVar[int]
    DOWN_FIELD_NUMBER: _ClassVar[int]
    up: int
    down: int
    def __init__(self, up: _Optional[int] = ..., down: _Optional[int] = ...) -> None: ...

class Results(_message.Message):
    __slots__ = ("job_identifier", "account_identifier", "submitted_at", "total", "completed", "failed", "finished", "explained", "results", "team", "submitted_by_key", "initial_queue_time", "total_queue_time", "average_model_latency", "total_model_latency", "elapsed_time", "starting_result_summarizing", "result_summarizing", "input_size", "failures")
    class InputResult(_message.Message):
        __slots__ = ("status", "start_time", "update_time", "end_time", "results", "engine", "input_fetching", "output_uploading", "model_latency", "queue_time", "voting")
        STATUS_FIELD_NUMBER: _ClassVar[int]
        START_TIME_FIELD_NUMBER: _ClassVar[int]
        UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
        END_TIME_FIELD_NUMBER: _ClassVar[int]
        RESULTS_FIELD_NUMBER: _ClassVar[int]
        ENGINE_FIELD_NUMBER: _ClassVar[int]
        INPUT_FETCHING_FIELD_NUMBER: _ClassVar[int]
        OUTPUT_UPLOADING_FIELD_NUMBER: _ClassVar[int]
        MODEL_LATENCY_FIELD_NUMBER: _ClassVar[int]
        QUEUE_TIME_FIELD_NUMBER: _ClassVar[int]
        VOTING_FIELD_NUMBER: _ClassVar[int]
        status: str
        start_time: _timestamp_pb2.Timestamp
        update_time: _timestamp_pb2.Timestamp
        end_time: _timestamp_pb2.Timestamp
        results: _struct_pb2.Struct
        engine: str
        input_fetching: int
        output_uploading: int
        model_latency: float
        queue_time: int
        voting: Voting
        def __init__(self, status: _Optional[str] = ..., start_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., results: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., engine: _Optional[str] = ..., input_fetching: _Optional[int] = ..., output_uploading: _Optional[int] = ..., model_latency: _Optional[float] = ..., queue_time: _Optional[int] = ..., voting: _Optional[_Union[Voting, _Mapping]] = ...) -> None: ...
    class ResultsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Results.InputResult
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Results.InputResult, _Mapping]] = ...) -> None: ...
    class FailuresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _any_pb2.Any
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_any_pb2.Any, _Mapping]] = ...) -> None: ...
    JOB_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    EXPLAINED_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_BY_KEY_FIELD_NUMBER: _ClassVar[int]
    INITIAL_QUEUE_TIME_FIELD_NUMBER: _ClassVar[int]
    TOTAL_QUEUE_TIME_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_MODEL_LATENCY_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MODEL_LATENCY_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_TIME_FIELD_NUMBER: _ClassVar[int]
    STARTING_RESULT_SUMMARIZING_FIELD_NUMBER: _ClassVar[int]
    RESULT_SUMMARIZING_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    job_identifier: str
    account_identifier: str
    submitted_at: _timestamp_pb2.Timestamp
    total: int
    completed: int
    failed: int
    finished: bool
    explained: bool
    results: _containers.MessageMap[str, Results.InputResult]
    team: _accounting_pb2.TeamIdentifier
    submitted_by_key: str
    initial_queue_time: int
    total_queue_time: int
    average_model_latency: float
    total_model_latency: float
    elapsed_time: int
    starting_result_summarizing: _timestamp_pb2.Timestamp
    result_summarizing: int
    input_size: int
    failures: _containers.MessageMap[str, _any_pb2.Any]
    def __init__(self, job_identifier: _Optional[str] = ..., account_identifier: _Optional[str] = ..., submitted_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., total: _Optional[int] = ..., completed: _Optional[int] = ..., failed: _Optional[int] = ..., finished: bool = ..., explained: bool = ..., results: _Optional[_Mapping[str, Results.InputResult]] = ..., team: _Optional[_Union[_accounting_pb2.TeamIdentifier, _Mapping]] = ..., submitted_by_key: _Optional[str] = ..., initial_queue_time: _Optional[int] = ..., total_queue_time: _Optional[int] = ..., average_model_latency: _Optional[float] = ..., total_model_latency: _Optional[float] = ..., elapsed_time: _Optional[int] = ..., starting_result_summarizing: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., result_summarizing: _Optional[int] = ..., input_size: _Optional[int] = ..., failures: _Optional[_Mapping[str, _any_pb2.Any]] = ...) -> None: ...
