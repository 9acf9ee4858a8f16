"""The edge's gRPC API as the edge SDK speaks it (jobs.v1.JobService, results.v1.ResultsService): one
channel per client, a deadline on every call, status codes mapped onto the contract's errors.

Needs the `grpc` extra (grpcio, protobuf); make_edge_client imports this module only for a grpc:// URL.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2, json_format
from google.protobuf.message import Message

from worker._proto.common.v1 import common_pb2
from worker._proto.common.v1 import errors_pb2 as _errors_pb2  # noqa: F401 -- registers common.v1.Error for Any
from worker._proto.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from worker._proto.results.v1 import results_pb2_grpc
from worker.edge.base import EdgeAnswerError, OnCall, RetryingEdgeClient, maybe_sent
from worker.edge.model import EdgeJob, EdgeResults, Features, JobSummary, Submission
from worker.errors import EdgeUnavailable

R = TypeVar("R")

_RECONNECT_CAP_MS = 1000  # measured: back within about 1 s of an edge's return, after any outage
# Room for a chunk's envelope (job id, source and input names) within the largest message sent.
_ENVELOPE_BYTES = 64 * 1024
# The codes a stock gateway answers 5xx for (INTERNAL, UNKNOWN, ...), which the HTTP client retries too.
_TRANSIENT_ANSWERS = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED, grpc.StatusCode.DATA_LOSS}
)
# Words grpc-core uses when no connection was made: nothing was sent, so any call may be repeated.
_NOT_CONNECTED = ("failed to connect", "connection refused", "dns resolution failed", "no address", "connect failed")
# Words grpc-core uses when the port answered something other than HTTP/2: likely an HTTP/1.1 gateway.
_NOT_HTTP2 = ("failed parsing http/2", "http1", "http/1")
# Every field, unset ones too, as a stock gateway renders them; the keyword was renamed in protobuf 5.26.
_ALL_FIELDS: dict[str, Any] = (
    {"always_print_fields_with_no_presence": True}
    if "always_print_fields_with_no_presence" in inspect.signature(json_format.MessageToDict).parameters
    else {"including_default_value_fields": True}
)


def as_dict(message: Message) -> dict[str, Any]:
    """A message as the HTTP gateway shows it: lowerCamelCase keys, enum names, RFC 3339 timestamps."""
    converted: dict[str, Any] = json_format.MessageToDict(message, **_ALL_FIELDS)
    return converted


class GrpcStatusError(EdgeAnswerError):
    """The edge answered a call with a gRPC status code other than OK."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        too_large = code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in message.lower()
        super().__init__(
            f"gRPC {code.name}",
            message,
            transient=(code == grpc.StatusCode.RESOURCE_EXHAUSTED and not too_large) or code in _TRANSIENT_ANSWERS,
            too_large=too_large,
            not_found=code == grpc.StatusCode.NOT_FOUND,
            unsupported=code == grpc.StatusCode.UNIMPLEMENTED,
        )
        self.status_code = code  # not `code`: that is the contract's error code


class GrpcEdgeClient(RetryingEdgeClient):
    """A thread-safe client for one edge's gRPC API: one channel, shared by every job thread."""

    def __init__(
        self,
        *,
        target: str,
        request_timeout_s: float,
        max_attempts: int,
        max_message_bytes: int = 64 << 20,
        api_key: str = "",
        on_call: OnCall | None = None,
    ) -> None:
        super().__init__(target=target, max_attempts=max_attempts, on_call=on_call)
        self.url = f"grpc://{target}"
        self._timeout_s = request_timeout_s
        self._max_message_bytes = max_message_bytes
        self._channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
                # grpc-core waits up to 120 s between reconnects by default: an edge back from an outage would
                # stay unused that long. A local connect attempt costs next to nothing: try every second.
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", _RECONNECT_CAP_MS),
            ],
        )
        self._jobs = jobs_pb2_grpc.JobServiceStub(self._channel)
        self._results = results_pb2_grpc.ResultsServiceStub(self._channel)
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"ApiKey {api_key}"),) if api_key else ()

    def close(self) -> None:
        self._channel.close()

    # -- plumbing ------------------------------------------------------------------------------------

    def _invoke(
        self, method: Callable[..., R], request: Message, name: str, meta: Mapping[str, str], timeout_s: float
    ) -> R:
        """One RPC with its deadline; an error status becomes GrpcStatusError or EdgeUnavailable."""
        started = self._mark_sent()
        metadata = self._metadata + tuple(meta.items())
        try:
            answer = method(request, timeout=timeout_s, metadata=metadata or None)
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()
            details = str(exc.details() or "")
            self._report(name, started, _error_kind(code, details))
            raise self._error(code, details, name, timeout_s) from None
        self._report(name, started, None)
        return answer

    def _error(
        self, code: grpc.StatusCode, details: str, name: str, timeout_s: float
    ) -> EdgeAnswerError | EdgeUnavailable:
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return maybe_sent(f"edge at {self.url} did not answer {name} within {timeout_s:g} s")
        if code == grpc.StatusCode.UNAVAILABLE:
            lowered = details.lower()
            if any(words in lowered for words in _NOT_HTTP2):
                return EdgeUnavailable(
                    f"edge at {self.url} does not speak HTTP/2 (an HTTP/1.1 gateway answers so): for an HTTP "
                    f'gateway on that port say edge.url = "http://{self.target}" ({details[:200]})'
                )
            message = f"edge at {self.url} unreachable: {details[:300]}"
            if any(words in lowered for words in _NOT_CONNECTED):
                return EdgeUnavailable(message)
            return maybe_sent(message)  # a connection dropped mid-call: the request may have arrived
        if code == grpc.StatusCode.CANCELLED:
            return maybe_sent(f"edge call {name} to {self.url} was cancelled: {details[:300]}")
        return GrpcStatusError(code, details[:500] or code.name)

    def _rpc(
        self,
        method: Callable[..., R],
        request: Message,
        name: str,
        meta: Mapping[str, str],
        *,
        deadline: float | None = None,
        idempotent: bool = True,
    ) -> R:
        return self._call(
            lambda: self._invoke(method, request, name, meta, self._timeout_s),
            name,
            deadline=deadline,
            idempotent=idempotent,
        )

    @staticmethod
    def _job_id(job_id: str) -> jobs_pb2.JobIdentifier:
        return jobs_pb2.JobIdentifier(identifier=job_id)

    # -- the transport's primitives -----------------------------------------------------------------------

    def _probe_once(self) -> None:
        self._invoke(self._jobs.GetFeatures, empty_pb2.Empty(), "features", {}, min(5.0, self._timeout_s))

    def _do_features(self) -> Features:
        features = Features.from_answer(as_dict(self._rpc(self._jobs.GetFeatures, empty_pb2.Empty(), "features", {})))
        # A chunk travels in one message: it must fit the largest message this channel sends.
        fitting = min(features.chunk_bytes, self._max_message_bytes - _ENVELOPE_BYTES)
        return Features(chunk_bytes=fitting, max_chunks=features.max_chunks, max_inputs=features.max_inputs)

    def _do_submit(self, submission: Submission, deadline: float | None, meta: Mapping[str, str]) -> EdgeJob:
        request = jobs_pb2.JobSubmission(
            model=common_pb2.ModelIdentifier(identifier=submission.model_id, version=submission.version),
            explain=submission.explain,
        )
        if submission.input_type is not None:
            request.input.type = submission.input_type
            for source, values in submission.wire_sources():
                request.input.sources[source].update(values)  # embedded: each value the data URI, as the SDK does
        receipt = self._rpc(self._jobs.SubmitJob, request, "submit", meta, deadline=deadline, idempotent=False)
        return EdgeJob.from_answer(as_dict(receipt))

    def _do_append(
        self, job_id: str, source: str, key: str, chunk: memoryview, *, deadline: float | None, meta: Mapping[str, str]
    ) -> None:
        request = jobs_pb2.AppendableJobInput(
            job_identifier=job_id, datasource_name=source, input_name=key, data=bytes(chunk)
        )
        self._rpc(self._jobs.AddInputToJob, request, "chunk", meta, deadline=deadline, idempotent=False)

    def _do_close(self, job_id: str, deadline: float | None, meta: Mapping[str, str]) -> EdgeJob:
        receipt = self._rpc(
            self._jobs.CloseJob, self._job_id(job_id), "close", meta, deadline=deadline, idempotent=False
        )
        return EdgeJob.from_answer(as_dict(receipt), fallback_id=job_id)

    def _do_get_job(self, job_id: str, deadline: float | None, meta: Mapping[str, str]) -> EdgeJob:
        details = self._rpc(self._jobs.GetJob, self._job_id(job_id), "status", meta, deadline=deadline)
        return EdgeJob.from_answer(as_dict(details), fallback_id=job_id)

    def _do_get_results(self, job_id: str, deadline: float | None, meta: Mapping[str, str]) -> EdgeResults:
        results = self._rpc(self._results.GetResults, self._job_id(job_id), "results", meta, deadline=deadline)
        return EdgeResults.from_answer(_results_dict(results))

    def _do_cancel(self, job_id: str, *, retried: bool, meta: Mapping[str, str]) -> EdgeJob:
        if retried:
            details = self._rpc(self._jobs.CancelJob, self._job_id(job_id), "cancel", meta)
        else:
            details = self._invoke(self._jobs.CancelJob, self._job_id(job_id), "cancel", meta, self._timeout_s)
        return EdgeJob.from_answer(as_dict(details), fallback_id=job_id)

    def _do_list_jobs(
        self, deadline: float | None, meta: Mapping[str, str], wanted: Mapping[str, str]
    ) -> list[JobSummary]:
        listed = self._rpc(self._jobs.GetJobs, jobs_pb2.JobFilter(**wanted), "list", meta, deadline=deadline)
        return [JobSummary.from_answer(as_dict(summary)) for summary in listed.jobs]


def _error_kind(code: grpc.StatusCode, details: str) -> str:
    """The metrics' kind of a failed call: as the HTTP client's where the cause is the same, else the code."""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "timeout"
    if code == grpc.StatusCode.UNAVAILABLE and any(words in details.lower() for words in _NOT_CONNECTED):
        return "connection"
    return f"grpc_{code.name.lower()}"  # e.g. grpc_unavailable, grpc_not_found, grpc_resource_exhausted


def _results_dict(results: Message) -> dict[str, Any]:
    """Results with each failure's Any unpacked where its type is known, else kept as its type URL."""
    failures = results.failures  # type: ignore[attr-defined]
    kept = {source: failures[source] for source in failures}
    for source in kept:
        del failures[source]
    data = as_dict(results)
    data["failures"] = {}
    for source, packed in kept.items():
        try:
            data["failures"][source] = json_format.MessageToDict(packed, **_ALL_FIELDS)
        except (TypeError, json_format.Error):
            data["failures"][source] = {"@type": packed.type_url}
    return data
