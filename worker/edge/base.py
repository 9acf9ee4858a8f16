"""What both transports share: the error an edge answers with, the retry loop, and the job calls built on
each transport's few primitives (one submission, one chunk, one close, one look, one cancel)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

import structlog

from worker.backoff import backoff_delay
from worker.edge.model import (
    EdgeJob,
    EdgeResults,
    Features,
    JobSummary,
    Submission,
    as_bytes,
    chunks,
)
from worker.errors import EdgeError, EdgeRejected, EdgeUnavailable, JobNotFound, ModelNotFound

log = structlog.get_logger("worker.edge")

T = TypeVar("T")
OnCall = Callable[[str, float, str | None], None]


class EdgeAnswerError(EdgeError):
    """The edge answered a call with an error: an HTTP status or a gRPC status code, and its message."""

    def __init__(
        self, summary: str, message: str, *, transient: bool, too_large: bool, not_found: bool, unsupported: bool
    ) -> None:
        super().__init__(f"edge answered {summary}: {message}")
        self.summary = summary  # "HTTP 404", "gRPC NOT_FOUND"
        self.edge_message = message
        self.transient = transient  # refused for now (busy, restarting): the same call may succeed later
        self.too_large = too_large  # refused as larger than the edge takes: repeating it can never succeed
        self.not_found = not_found
        self.unsupported = unsupported  # no such call on this edge (HTTP 501, gRPC UNIMPLEMENTED)


def maybe_sent(message: str) -> EdgeUnavailable:
    """The request may have reached the edge (a read timeout, a connection dropped mid-answer)."""
    error = EdgeUnavailable(message)
    error.maybe_sent = True
    return error


def submit_error(exc: EdgeAnswerError, model_id: str, version: str) -> EdgeError:
    """A refused submission (or chunk, or close) as the contract's error."""
    if exc.not_found:
        return ModelNotFound(f"model {model_id}:{version} not found on the edge: {exc.edge_message}")
    if exc.too_large:
        return EdgeRejected(f"edge refused the job as too large: {exc.edge_message}", code="PAYLOAD_TOO_LARGE")
    return EdgeRejected(f"edge refused the job ({exc.summary}): {exc.edge_message}")


class RetryingEdgeClient:
    """The job calls of the EdgeClient protocol over one transport's primitives; thread-safe.

    A transport subclass implements the `_do_*` methods, each one exchange with the edge made through
    `_call`, which retries transient failures with capped exponential backoff and jitter.
    """

    def __init__(self, *, target: str, max_attempts: int, on_call: OnCall | None = None) -> None:
        self.target = target
        self._max_attempts = max_attempts
        self._on_call = on_call
        self._local = threading.local()
        self._features: Features | None = None
        self._features_lock = threading.Lock()

    # -- what a transport implements ---------------------------------------------------------------------

    def _do_submit(self, submission: Submission, deadline: float | None, meta: Mapping[str, str]) -> EdgeJob:
        raise NotImplementedError

    def _do_append(
        self, job_id: str, source: str, key: str, chunk: memoryview, *, deadline: float | None, meta: Mapping[str, str]
    ) -> None:
        raise NotImplementedError

    def _do_close(self, job_id: str, deadline: float | None, meta: Mapping[str, str]) -> EdgeJob:
        raise NotImplementedError

    def _do_get_job(self, job_id: str, deadline: float | None, meta: Mapping[str, str]) -> EdgeJob:
        raise NotImplementedError

    def _do_get_results(self, job_id: str, deadline: float | None, meta: Mapping[str, str]) -> EdgeResults:
        raise NotImplementedError

    def _do_cancel(self, job_id: str, *, retried: bool, meta: Mapping[str, str]) -> EdgeJob:
        raise NotImplementedError

    def _do_features(self) -> Features:
        raise NotImplementedError

    def _do_list_jobs(
        self, deadline: float | None, meta: Mapping[str, str], wanted: Mapping[str, str]
    ) -> list[JobSummary]:
        raise NotImplementedError

    def _probe_once(self) -> None:
        """One unretried call that proves the edge answers; raises EdgeAnswerError or EdgeUnavailable."""
        raise NotImplementedError

    # -- plumbing -------------------------------------------------------------------------------------

    def _mark_sent(self) -> float:
        started = time.monotonic()
        self._local.sent_at = started
        return started

    def _report(self, name: str, started: float, error_kind: str | None) -> None:
        if self._on_call is not None:
            self._on_call(name, time.monotonic() - started, error_kind)

    def last_sent_at(self) -> float | None:
        """When this thread's last request started (time.monotonic()), whatever its outcome."""
        sent: float | None = getattr(self._local, "sent_at", None)
        return sent

    def _call(self, once: Callable[[], T], name: str, *, deadline: float | None = None, idempotent: bool = True) -> T:
        """One API call, retried on transient failures with capped exponential backoff and jitter.

        A non-idempotent call (a chunk, a close) that may have reached the edge is not repeated: the caller
        starts its upload again. A submission is repeated, and the receipt says so (maybe_duplicated), or
        the final EdgeUnavailable does (maybe_sent): the edge has no idempotency key, so a job it accepted
        without our hearing of it can only be found again in its job list (README, "Idempotency").
        """
        attempt = 0
        sent_unanswered = False
        while True:
            attempt += 1
            try:
                answer = once()
                if sent_unanswered:
                    self._local.maybe_duplicated = True
                return answer
            except EdgeAnswerError as exc:
                if not exc.transient or attempt >= self._max_attempts:
                    if exc.transient:
                        raise EdgeUnavailable(f"{exc} (after {attempt} attempts)") from None
                    raise
                failure: EdgeError = exc
            except EdgeUnavailable as exc:
                if exc.maybe_sent and not idempotent:
                    if name != "submit":
                        raise
                    sent_unanswered = True  # the caller logs it with the job's context
                if attempt >= self._max_attempts:
                    final = EdgeUnavailable(f"{exc} (after {attempt} attempts)")
                    final.maybe_sent = sent_unanswered
                    raise final from None
                failure = exc
            delay = backoff_delay(attempt)
            if deadline is not None and time.monotonic() + delay > deadline:
                final = EdgeUnavailable(f"{failure} (deadline reached after {attempt} attempts)")
                final.maybe_sent = sent_unanswered
                raise final
            log.debug("edge_call_retry", call=name, attempt=attempt, delay_s=round(delay, 3), error=str(failure))
            time.sleep(delay)

    # -- the EdgeClient protocol ------------------------------------------------------------------------

    def features(self) -> Features:
        """The edge's chunking limits (cached after the first successful read)."""
        if self._features is not None:
            return self._features
        with self._features_lock:
            if self._features is None:
                self._features = self._do_features()
            return self._features

    def answers(self) -> tuple[bool, str]:
        """One unretried probe: (whether the edge answers, why not)."""
        try:
            self._probe_once()
        except EdgeAnswerError as exc:
            if exc.transient:
                return False, str(exc)
            return True, ""  # it answers, even if it has no such call
        except EdgeUnavailable as exc:
            return False, exc.message
        return True, ""

    def submit_job(
        self,
        *,
        model_id: str,
        version: str,
        sources: Mapping[str, Mapping[str, bytes | str]],
        input_type: str,
        explain: bool,
        deadline: float | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> EdgeJob:
        """Submit a text or embedded job in one call; raises ModelNotFound, EdgeRejected or EdgeUnavailable."""
        submission = Submission(model_id, version, explain, input_type=input_type, sources=sources)
        return self._submit(submission, deadline, _meta(traceparent, tracestate))

    def _submit(self, submission: Submission, deadline: float | None, meta: Mapping[str, str]) -> EdgeJob:
        self._local.maybe_duplicated = False
        try:
            job = self._do_submit(submission, deadline, meta)
        except EdgeAnswerError as exc:
            raise submit_error(exc, submission.model_id, submission.version) from None
        job.maybe_duplicated = bool(getattr(self._local, "maybe_duplicated", False))
        return job

    def submit_chunked(
        self,
        *,
        model_id: str,
        version: str,
        sources: Mapping[str, Mapping[str, bytes | str]],
        explain: bool,
        deadline: float | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> EdgeJob:
        """Open a job, append every input in chunks no larger than the edge allows, then close it."""
        meta = _meta(traceparent, tracestate)
        chunk_bytes = self.features().chunk_bytes
        opened = self._submit(Submission(model_id=model_id, version=version, explain=explain), deadline, meta)
        job_id = opened.job_identifier
        if not job_id:
            raise EdgeRejected("edge opened a job without a jobIdentifier")
        try:
            for source, inputs in sources.items():
                for key, value in inputs.items():
                    for chunk in chunks(as_bytes(value), chunk_bytes):
                        self._do_append(job_id, source, key, chunk, deadline=deadline, meta=meta)
            closed = self._do_close(job_id, deadline, meta)
        except EdgeAnswerError as exc:
            self._abandon(job_id, meta)
            if exc.unsupported:
                failure: EdgeError = EdgeRejected(f"edge does not support open jobs (chunked upload): {exc.summary}")
            else:
                failure = submit_error(exc, model_id, version)
            failure.job_identifier = job_id  # the open job existed (and was cancelled): its reply names it
            raise failure from None
        except EdgeError as exc:
            self._abandon(job_id, meta)
            exc.job_identifier = job_id
            raise
        closed.job_identifier = closed.job_identifier or job_id
        closed.maybe_duplicated = opened.maybe_duplicated
        return closed

    def _abandon(self, job_id: str, meta: Mapping[str, str]) -> None:
        try:
            self._do_cancel(job_id, retried=False, meta=meta)
        except EdgeError:
            log.warning("edge_open_job_abandoned", job_identifier=job_id)

    def get_job(
        self,
        job_id: str,
        *,
        deadline: float | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> EdgeJob:
        """The job's status; raises JobNotFound when the edge does not know it."""
        try:
            return self._do_get_job(job_id, deadline, _meta(traceparent, tracestate))
        except EdgeAnswerError as exc:
            if exc.not_found:
                raise JobNotFound(f"edge does not know job {job_id}: {exc.edge_message}") from None
            raise

    def get_results(
        self,
        job_id: str,
        *,
        deadline: float | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> EdgeResults | None:
        """The job's Results, or None while the edge says they are not ready (not found)."""
        try:
            return self._do_get_results(job_id, deadline, _meta(traceparent, tracestate))
        except EdgeAnswerError as exc:
            if exc.not_found:
                return None
            raise

    def cancel_job(
        self, job_id: str, *, traceparent: str | None = None, tracestate: str | None = None
    ) -> EdgeJob | None:
        """Cancel a job; None when the edge no longer knows it."""
        try:
            return self._do_cancel(job_id, retried=True, meta=_meta(traceparent, tracestate))
        except EdgeAnswerError as exc:
            if exc.not_found:
                return None
            raise

    def list_jobs(
        self,
        *,
        deadline: float | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
        model_id: str = "",
        start: str = "",
        end: str = "",
    ) -> list[JobSummary]:
        """Every job the edge lists (GetJobs, GET /api/jobs): how a job whose receipt was lost is found.

        model_id, start and end (RFC 3339 creation times) are JobFilter's model, start_date and end_date;
        empty: not filtered.
        """
        wanted = {k: v for k, v in (("model", model_id), ("start_date", start), ("end_date", end)) if v}
        return self._do_list_jobs(deadline, _meta(traceparent, tracestate), wanted)

    def close(self) -> None:
        """Release the transport's connections (a no-op where they close themselves)."""


def _meta(traceparent: str | None, tracestate: str | None) -> dict[str, str]:
    if not traceparent:
        return {}
    return {"traceparent": traceparent, "tracestate": tracestate} if tracestate else {"traceparent": traceparent}
