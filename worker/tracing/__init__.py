"""Traces (contract §7): a request's W3C trace context continued into its edge calls, replies and log lines.

A request whose AMQP headers carry a valid `traceparent` (and `tracestate`) gets a span of its own, the
job's span, in that trace: every reply carries the job's `traceparent`, every log line of the job its
`trace_id`, and each edge call a child `traceparent` of its own (a new span id whose parent is the job's
span). A request without one gets no trace, unless OpenTelemetry is configured, which starts a new one.

With the optional `otel` extra and a tracer provider configured (the OpenTelemetry API's global one, set by
the host's code or by `opentelemetry-instrument`; docs/operations.md, "Traces"), these spans are real: a
CONSUMER span `process <queue>` and one CLIENT span per edge call, named and attributed as the messaging,
HTTP and RPC semantic conventions say. Without it nothing is recorded and nothing is imported.

The job's trace lives in a context variable for the delivery's worker thread (`job_trace`); the edge client
the job lifecycle holds is wrapped (`TracedEdgeClient`) so that each of its calls picks the trace up.

The rooms: `context` (the W3C values, parsed and rendered), `job` (one job's trace, its log fields and reply
route), `edge` (the traced edge client), `otel` (the OpenTelemetry spans and their attributes).
"""

from worker.tracing.context import (
    TRACEPARENT,
    TRACESTATE,
    TRACESTATE_MAX_CHARS,
    TRACESTATE_MAX_MEMBERS,
    TraceContext,
    cap_tracestate,
    context_from_headers,
    new_span_id,
    new_trace_id,
    parse_traceparent,
    trace_id_of,
)
from worker.tracing.edge import TracedEdgeClient, traced_edge
from worker.tracing.job import JobTrace, current_job, job_trace
from worker.tracing.otel import EdgeCall, use_tracer_provider
from worker.tracing.otel import tracer as _tracer  # the tests ask which tracer a job would get now

__all__ = [
    "TRACEPARENT",
    "TRACESTATE",
    "TRACESTATE_MAX_CHARS",
    "TRACESTATE_MAX_MEMBERS",
    "EdgeCall",
    "JobTrace",
    "TraceContext",
    "TracedEdgeClient",
    "_tracer",
    "cap_tracestate",
    "context_from_headers",
    "current_job",
    "job_trace",
    "new_span_id",
    "new_trace_id",
    "parse_traceparent",
    "trace_id_of",
    "traced_edge",
    "use_tracer_provider",
]
