"""The producer API's values: the immutable `Job` a reply describes, its error, and the client's exceptions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

# Statuses whose final reply carries an error (contract section 2).
ERROR_STATUSES = frozenset({"REJECTED", "ERROR", "TIMEOUT", "FAILED", "CANCELED"})

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class ClientError(Exception):
    """Base of every exception the producer API raises."""


class BrokerUnreachable(ClientError):
    """No broker URL gave a ready session within the connect timeout."""


class PublishError(ClientError):
    """The broker did not take the request (nack, or no confirm in time)."""


class RequestUnroutable(PublishError):
    """No queue of that name on the broker: the request was returned."""


class ReplyTimeout(ClientError, TimeoutError):
    """No final reply arrived within the wait's timeout (the job may still finish later)."""


class ClientClosed(ClientError):
    """The client was closed while this call waited."""


class UnknownJob(ClientError):
    """This client does not track the job (another client's, or its final reply was dropped by the cap)."""


class JobError(ClientError):
    """A final reply said the job did not complete; `code` and `message` are the reply's `error`."""

    def __init__(self, job: Job, code: str, message: str, retryable: bool) -> None:
        super().__init__(f"{code}: {message}")
        self.job = job
        self.code = code
        self.message = message
        self.retryable = retryable


class JobRejected(JobError):
    """The worker refused the request as invalid (status REJECTED): do not retry it unchanged."""


class JobFailed(JobError):
    """The edge ran the job and it failed (status FAILED, code JOB_FAILED); details in `job.failures`."""


class JobTimeout(JobError):
    """The job did not finish within the request's timeout (status TIMEOUT)."""


class EdgeError(JobError):
    """Any other final error: MODEL_NOT_FOUND, EDGE_UNAVAILABLE, JOB_LOST, JOB_CANCELED, ..."""


@dataclass(frozen=True, slots=True)
class ReplyError:
    """A reply's `error` map."""

    code: str
    message: str
    retryable: bool


def freeze(value: Any) -> Any:
    """A read-only copy: maps become mappingproxies, lists tuples (bytes and scalars stay as they are)."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Plain dicts and lists again, for JSON or for the caller to change."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _map(value: Any) -> Mapping[str, Any]:
    return freeze(value) if isinstance(value, Mapping) else _EMPTY


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Job:
    """One request's state as its latest reply (contract section 2) describes it; immutable.

    `message_id` is the one the request was published with: submitting again with it is a safe retry.
    Equality compares every field; the hash uses the ids and the status, so jobs can key a dict.
    """

    status: str
    final: bool
    message_id: str
    correlation_id: str
    job_identifier: str | None = None
    request_id: str | None = None
    model: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    explain: bool = False
    total: int = 0
    pending: int = 0
    completed: int = 0
    failed: int = 0
    job_inputs: tuple[str, ...] = ()
    created_at: str | None = None
    updated_at: str | None = None
    submitted_at: str | None = None
    finished_at: str | None = None
    elapsed_ms: int = 0
    results: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: _EMPTY)
    failures: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: _EMPTY)
    error: ReplyError | None = None

    def __hash__(self) -> int:
        return hash((self.message_id, self.correlation_id, self.status, self.final, self.job_identifier))

    @property
    def done(self) -> bool:
        """Whether this is the request's final state."""
        return self.final

    @classmethod
    def from_reply(cls, reply: Mapping[str, Any], *, message_id: str, correlation_id: str) -> Job:
        """The Job a decoded reply body describes; unknown keys are ignored, missing ones get defaults."""
        error = reply.get("error")
        reply_error = None
        if isinstance(error, Mapping):
            reply_error = ReplyError(
                code=str(error.get("code") or "ERROR"),
                message=str(error.get("message") or ""),
                retryable=bool(error.get("retryable", False)),
            )
        inputs = reply.get("job_inputs")
        return cls(
            status=str(reply.get("status") or "UNKNOWN"),
            final=bool(reply.get("final", False)),
            message_id=message_id,
            correlation_id=correlation_id,
            job_identifier=_str_or_none(reply.get("job_identifier")),
            request_id=_str_or_none(reply.get("request_id")),
            model=_map(reply.get("model")),
            explain=bool(reply.get("explain", False)),
            total=_int(reply.get("total")),
            pending=_int(reply.get("pending")),
            completed=_int(reply.get("completed")),
            failed=_int(reply.get("failed")),
            job_inputs=tuple(str(s) for s in inputs) if isinstance(inputs, list | tuple) else (),
            created_at=_str_or_none(reply.get("created_at")),
            updated_at=_str_or_none(reply.get("updated_at")),
            submitted_at=_str_or_none(reply.get("submitted_at")),
            finished_at=_str_or_none(reply.get("finished_at")),
            elapsed_ms=_int(reply.get("elapsed_ms")),
            results=_map(reply.get("results")),
            failures=_map(reply.get("failures")),
            error=reply_error,
        )

    def to_dict(self) -> dict[str, Any]:
        """The reply's keys as plain data (what `edge-worker submit --wait` prints), plus `message_id`."""
        out: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "error":
                if value is None:
                    continue
                value = {"code": value.code, "message": value.message, "retryable": value.retryable}
            out[item.name] = thaw(value)
        return out

    def raise_for_error(self) -> Job:
        """Raise the JobError subclass matching a final error reply; return the job itself otherwise."""
        if not self.final or (self.error is None and self.status not in ERROR_STATUSES):
            return self
        error = self.error or ReplyError(code=self.status, message=f"the job ended {self.status}", retryable=False)
        kind: type[JobError]
        if self.status == "REJECTED":
            kind = JobRejected
        elif self.status == "TIMEOUT" or error.code == "TIMEOUT":
            kind = JobTimeout
        elif self.status == "FAILED" or error.code == "JOB_FAILED":
            kind = JobFailed
        else:
            kind = EdgeError
        raise kind(self, error.code, error.message, error.retryable)
