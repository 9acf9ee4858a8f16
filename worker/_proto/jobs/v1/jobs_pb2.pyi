from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from worker._proto.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNKNOWN: _ClassVar[JobStatus]
    SUBMITTED: _ClassVar[JobStatus]
    IN_PROGRESS: _ClassVar[JobStatus]
    COMPLETE: _ClassVar[JobStatus]
    CANCELED: _ClassVar[JobStatus]
    FAILED: _ClassVar[JobStatus]
    OPEN: _ClassVar[JobStatus]
UNKNOWN: JobStatus
SUBMITTED: JobStatus
IN_PROGRESS: JobStatus
COMPLETE: JobStatus
CANCELED: JobStatus
FAILED: JobStatus
OPEN: JobStatus

class JobInput(_message.Message):
    __slots__ = ("type", "sources", "timeout", "accessKeyID", "secretAccessKey", "region", "endpoint", "storageAccount", "storageAccountKey")
    class SourcesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _struct_pb2.Struct
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    ACCESSKEYID_FIELD_NUMBER: _ClassVar[int]
    SECRETACCESSKEY_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    STORAGEACCOUNT_FIELD_NUMBER: _ClassVar[int]
    STORAGEACCOUNTKEY_FIELD_NUMBER: _ClassVar[int]
    type: str
    sources: _containers.MessageMap[str, _struct_pb2.Struct]
    timeout: int
    accessKeyID: str
    secretAccessKey: str
    region: str
    endpoint: str
    storageAccount: str
    storageAccountKey: str
    def __init__(self, type: _Optional[str] = ..., sources: _Optional[_Mapping[str, _struct_pb2.Struct]] = ..., timeout: _Optional[int] = ..., accessKeyID: _Optional[str] = ..., secretAccessKey: _Optional[str] = ..., region: _Optional[str] = ..., endpoint: _Optional[str] = ..., storageAccount: _Optional[str] = ..., storageAccountKey: _Optional[str] = ...) -> None: ...

class AppendableJobInput(_message.Message):
    __slots__ = ("job_identifier", "datasource_name", "input_name", "data")
    JOB_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    DATASOURCE_NAME_FIELD_NUMBER: _ClassVar[int]
    INPUT_NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    job_identifier: str
    datasource_name: str
    input_name: str
    data: bytes
    def __init__(self, job_identifier: _Optional[str] = ..., datasource_name: _Optional[str] = ..., input_name: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class JobSubmission(_message.Message):
    __slots__ = ("model", "input", "explain")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelIdentifier
    input: JobInput
    explain: bool
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelIdentifier, _Mapping]] = ..., input: _Optional[_Union[JobInput, _Mapping]] = ..., explain: bool = ...) -> None: ...

class JobSubmissionReceipt(_message.Message):
    __slots__ = ("job_identifier", "model", "access_key", "total_inputs", "job_inputs", "input_byte_amount", "submitted_at", "status", "details", "explain")
    class JobDetails(_message.Message):
        __slots__ = ("account_identifier", "created_at", "updated_at", "total", "pending", "completed", "failed", "elapsed_time")
        ACCOUNT_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
        CREATED_AT_FIELD_NUMBER: _ClassVar[int]
        UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
        TOTAL_FIELD_NUMBER: _ClassVar[int]
        PENDING_FIELD_NUMBER: _ClassVar[int]
        COMPLETED_FIELD_NUMBER: _ClassVar[int]
        FAILED_FIELD_NUMBER: _ClassVar[int]
        ELAPSED_TIME_FIELD_NUMBER: _ClassVar[int]
        account_identifier: str
        created_at: _timestamp_pb2.Timestamp
        updated_at: _timestamp_pb2.Timestamp
        total: int
        pending: int
        completed: int
        failed: int
        elapsed_time: int
        def __init__(self, account_identifier: _Optional[str] = ..., created_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., total: _Optional[int] = ..., pending: _Optional[int] = ..., completed: _Optional[int] = ..., failed: _Optional[int] = ..., elapsed_time: _Optional[int] = ...) -> None: ...
    class JobInputs(_message.Message):
        __slots__ = ("identifier",)
        IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
        identifier: _containers.RepeatedScalarFieldContainer[str]
        def __init__(self, identifier: _Optional[_Iterable[str]] = ...) -> None: ...
    JOB_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACCESS_KEY_FIELD_NUMBER: _ClassVar[int]
    TOTAL_INPUTS_FIELD_NUMBER: _ClassVar[int]
    JOB_INPUTS_FIELD_NUMBER: _ClassVar[int]
    INPUT_BYTE_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    job_identifier: str
    model: _common_pb2.ModelIdentifier
    access_key: str
    total_inputs: int
    job_inputs: JobSubmissionReceipt.JobInputs
    input_byte_amount: int
    submitted_at: _timestamp_pb2.Timestamp
    status: JobStatus
    details: JobSubmissionReceipt.JobDetails
    explain: bool
    def __init__(self, job_identifier: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelIdentifier, _Mapping]] = ..., access_key: _Optional[str] = ..., total_inputs: _Optional[int] = ..., job_inputs: _Optional[_Union[JobSubmissionReceipt.JobInputs, _Mapping]] = ..., input_byte_amount: _Optional[int] = ..., submitted_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., status: _Optional[_Union[JobStatus, str]] = ..., details: _Optional[_Union[JobSubmissionReceipt.JobDetails, _Mapping]] = ..., explain: bool = ...) -> None: ...

class JobIdentifier(_message.Message):
    __slots__ = ("identifier",)
    IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    identifier: str
    def __init__(self, identifier: _Optional[str] = ...) -> None: ...

class JobDetails(_message.Message):
    __slots__ = ("job_identifier", "model", "status", "created_at", "updated_at", "submitted_at", "total", "pending", "completed", "failed", "elapsed_time", "job_inputs")
    class JobInputs(_message.Message):
        __slots__ = ("identifier",)
        IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
        identifier: str
        def __init__(self, identifier: _Optional[str] = ...) -> None: ...
    JOB_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_TIME_FIELD_NUMBER: _ClassVar[int]
    JOB_INPUTS_FIELD_NUMBER: _ClassVar[int]
    job_identifier: str
    model: _common_pb2.ModelIdentifier
    status: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    submitted_at: _timestamp_pb2.Timestamp
    total: int
    pending: int
    completed: int
    failed: int
    elapsed_time: int
    job_inputs: _containers.RepeatedCompositeFieldContainer[JobDetails.JobInputs]
    def __init__(self, job_identifier: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelIdentifier, _Mapping]] = ..., status: _Optional[str] = ..., created_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., submitted_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., total: _Optional[int] = ..., pending: _Optional[int] = ..., completed: _Optional[int] = ..., failed: _Optional[int] = ..., elapsed_time: _Optional[int] = ..., job_inputs: _Optional[_Iterable[_Union[JobDetails.JobInputs, _Mapping]]] = ...) -> None: ...

class JobFilter(_message.Message):
    __slots__ = ("start_date", "end_date", "status", "model", "user", "access_key")
    START_DATE_FIELD_NUMBER: _ClassVar[int]
    END_DATE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    ACCESS_KEY_FIELD_NUMBER: _ClassVar[int]
    start_date: str
    end_date: str
    status: str
    model: str
    user: str
    access_key: str
    def __init__(self, start_date: _Optional[str] = ..., end_date: _Optional[str] = ..., status: _Optional[str] = ..., model: _Optional[str] = ..., user: _Optional[str] = ..., access_key: _Optional[str] = ...) -> None: ...

class JobSummary(_message.Message):
    __slots__ = ("job_identifier", "status", "model")
    JOB_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    job_identifier: str
    status: str
    model: _common_pb2.ModelIdentifier
    def __init__(self, job_identifier: _Optional[str] = ..., status: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelIdentifier, _Mapping]] = ...) -> None: ...

class JobSummaryList(_message.Message):
    __slots__ = ("jobs", "total_count", "page_number", "page_size", "page_count")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    PAGE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobSummary]
    total_count: int
    page_number: int
    page_size: int
    page_count: int
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobSummary, _Mapping]]] = ..., total_count: _Optional[int] = ..., page_number: _Optional[int] = ..., page_size: _Optional[int] = ..., page_count: _Optional[int] = ...) -> None: ...

class JobFeatures(_message.Message):
    __slots__ = ("input_chunk_maximum_size", "maximum_input_chunks", "maximum_inputs_per_job")
    INPUT_CHUNK_MAXIMUM_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAXIMUM_INPUT_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    MAXIMUM_INPUTS_PER_JOB_FIELD_NUMBER: _ClassVar[int]
    input_chunk_maximum_size: str
    maximum_input_chunks: int
    maximum_inputs_per_job: int
    def __init__(self, input_chunk_maximum_size: _Optional[str] = ..., maximum_input_chunks: _Optional[int] = ..., maximum_inputs_per_job: _Optional[int] = ...) -> None: ...
