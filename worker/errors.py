"""Errors as values with names: each maps to a reply error code or to a process exit code, here only."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes (sysexits.h), as in the contract's section 6."""

    OK = 0
    USAGE = 64
    UNAVAILABLE = 69
    SOFTWARE = 70
    CONFIG = 78


class EdgeWorkerError(Exception):
    """Base of every error the worker raises on purpose."""


class ConfigError(EdgeWorkerError):
    """The configuration is invalid; the message names the key."""

    exit_code = ExitCode.CONFIG


class QueueMismatch(ConfigError):
    """A queue exists with arguments other than the ones configured."""


class ServiceUnavailable(EdgeWorkerError):
    """A service the worker needs stayed unreachable at start-up."""

    exit_code = ExitCode.UNAVAILABLE


class JobError(EdgeWorkerError):
    """An error that ends a request with an error reply: it carries the contract's code."""

    code = "ERROR"
    retryable = False
    # The edge job this error ended, when one existed (a chunked upload refused after its open job was made).
    job_identifier: str | None = None

    def __init__(self, message: str, *, code: str | None = None, retryable: bool | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable

    @property
    def message(self) -> str:
        return str(self)

    def as_reply_error(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, "retryable": self.retryable}


class InvalidRequest(JobError):
    """The request can never be valid: rejected and dead-lettered, never retried."""

    code = "INVALID_REQUEST"
    request_id: str | None = None


class UnsupportedContentType(InvalidRequest):
    code = "UNSUPPORTED_CONTENT_TYPE"


class PayloadTooLarge(InvalidRequest):
    code = "PAYLOAD_TOO_LARGE"


class EdgeError(JobError):
    """Something the edge said or did ended the job."""


class ModelNotFound(EdgeError):
    code = "MODEL_NOT_FOUND"


class EdgeRejected(EdgeError):
    """The edge refused the job as invalid (400)."""

    code = "EDGE_REJECTED"


class EdgeUnavailable(EdgeError):
    """The edge did not answer usefully after every retry: transient by nature."""

    code = "EDGE_UNAVAILABLE"
    retryable = True
    # The request may have reached the edge (a read timeout, a connection dropped mid-answer), as opposed
    # to a connection that was never made: a non-idempotent call must not be repeated blindly.
    maybe_sent = False


class JobNotFound(EdgeError):
    """The edge answered 404 for a job it had accepted."""

    code = "JOB_LOST"
    retryable = True


class JobTimeout(JobError):
    code = "TIMEOUT"
    retryable = True


class DeliveryLimit(JobError):
    code = "DELIVERY_LIMIT"
