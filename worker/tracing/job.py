"""One job's trace: the job's span in the request's trace, current on the delivery's worker thread.

Every reply of the job carries its `traceparent` (`reply_route`), every log line of the thread its `trace_id`
and `span_id` (structlog's context variables), and each edge call a child span of its own (`edge_call`).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

import structlog

from worker.messages import ReplyRoute
from worker.tracing import otel
from worker.tracing.context import TraceContext, context_from_headers
from worker.tracing.otel import EdgeCall

# Outcomes whose processing did not succeed: the consumer span ends with an error status.
_FAILED_OUTCOMES = frozenset({"REJECTED", "ERROR", "TIMEOUT", "FAILED", "REQUEUED", "ABANDONED"})


class JobTrace:
    """The trace of one delivery: the job's span (a TraceContext, and the OpenTelemetry span when recording)."""

    __slots__ = ("_span", "_tracer", "context")

    def __init__(self, context: TraceContext | None, *, span: Any = None, tracer: Any = None) -> None:
        self.context = context
        self._span = span
        self._tracer = tracer

    @property
    def log_fields(self) -> dict[str, str]:
        """What each log line of the job carries: trace_id and the job's span_id (nothing without a trace)."""
        if self.context is None:
            return {}
        return {"trace_id": self.context.trace_id, "span_id": self.context.span_id}

    def reply_route(self, route: ReplyRoute) -> ReplyRoute:
        """The route with the job's traceparent and tracestate, which every reply's headers carry."""
        if self.context is None:
            return route
        return replace(route, traceparent=self.context.traceparent, tracestate=self.context.tracestate)

    @property
    def recording(self) -> bool:
        """Whether OpenTelemetry records this job's spans (else its edge calls only carry a child traceparent)."""
        return self._span is not None and self._tracer is not None

    def finish(self, status: str, *, code: str | None = None) -> None:
        """Record the outcome on the job's span: an error status for outcomes that are not a success."""
        if self._span is not None and status in _FAILED_OUTCOMES:
            otel.set_error(self._span, code or status)

    @contextlib.contextmanager
    def edge_call(self, name: str, attributes: Mapping[str, Any]) -> Iterator[EdgeCall]:
        """One edge call: what it carries (a CLIENT span's traceparent with OpenTelemetry, else a child's)."""
        if self.context is None:
            yield EdgeCall(None)
            return
        if not self.recording:
            yield EdgeCall(self.context.child().traceparent)
            return
        with otel.client_span(self._tracer, self._span, name, attributes, tracestate=self.context.tracestate) as call:
            yield call


_current: contextvars.ContextVar[JobTrace | None] = contextvars.ContextVar("edge_worker_job_trace", default=None)


def current_job() -> JobTrace | None:
    """The trace of the job this thread is running, if any."""
    return _current.get()


@contextlib.contextmanager
def job_trace(properties: Any, *, queue: str, body_size: int) -> Iterator[JobTrace]:
    """The trace of one delivery, current on this thread until the block ends (the job's whole run).

    While it runs, every log line of this thread carries the job's trace_id and span_id (structlog's context
    variables), the edge client's own lines included.
    """
    message_id = _text(getattr(properties, "message_id", None))
    incoming = context_from_headers(getattr(properties, "headers", None), message_id=message_id)
    tracer = otel.tracer()
    span = None
    if tracer is None:
        job = JobTrace(incoming.child() if incoming is not None else None)
    else:
        span = otel.start_consumer_span(
            tracer,
            incoming,
            queue=queue,
            body_size=body_size,
            message_id=message_id,
            correlation_id=_text(getattr(properties, "correlation_id", None)),
        )
        job = JobTrace(otel.context_of(span, incoming.tracestate if incoming else None), span=span, tracer=tracer)
    token = _current.set(job)
    try:
        with structlog.contextvars.bound_contextvars(**job.log_fields), otel.use_span(span):
            yield job
    except BaseException as exc:
        if span is not None:
            otel.set_error(span, exc)
        raise
    finally:
        _current.reset(token)
        if span is not None:
            span.end()


def _text(value: Any) -> str | None:
    """An AMQP property as text (pika gives bytes or str)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None if value is None else str(value)
