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
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import structlog

from worker.edge import EdgeClient, EdgeJob, EdgeResults, Features
from worker.edge.model import JobSummary
from worker.errors import JobNotFound, ModelNotFound
from worker.messages import ReplyRoute

log = structlog.get_logger("worker.tracing")

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# W3C Trace Context: a vendor propagates at least 512 characters of tracestate and at most 32 list members;
# over the limit, members longer than 128 characters go first, then members from the end.
TRACESTATE_MAX_CHARS = 512
TRACESTATE_MAX_MEMBERS = 32
_TRACESTATE_LONG_MEMBER = 128
_HEX = frozenset("0123456789abcdef")
_INSTRUMENTATION = "edge-worker"


# -- the W3C values ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TraceContext:
    """One span's place in a trace: W3C trace-id, span (parent) id, trace flags, and the tracestate."""

    trace_id: str  # 32 lowercase hex digits, not all zero
    span_id: str  # 16 lowercase hex digits, not all zero
    flags: str = "01"  # 2 lowercase hex digits; bit 0 is "sampled"
    tracestate: str | None = None

    @property
    def traceparent(self) -> str:
        """The W3C traceparent header naming this span (version 00)."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def child(self) -> TraceContext:
        """A new span in the same trace (a new span id; same flags and tracestate)."""
        return TraceContext(self.trace_id, new_span_id(), self.flags, self.tracestate)


def new_span_id() -> str:
    while True:
        span_id = os.urandom(8).hex()
        if span_id != "0" * 16:
            return span_id


def new_trace_id() -> str:
    while True:
        trace_id = os.urandom(16).hex()
        if trace_id != "0" * 32:
            return trace_id


def parse_traceparent(value: str) -> TraceContext:
    """The W3C traceparent as a TraceContext; ValueError naming what is wrong.

    Version 00 is exactly 55 characters; a later version may be longer, and its first four fields are read
    as version 00's (the W3C rule for forward compatibility). Hex is lowercase; ids are not all zero.
    """
    value = value.strip(" \t")
    if len(value) < 55:
        raise ValueError(f"traceparent is {len(value)} characters; version 00 has 55")
    version = value[:2]
    if not _is_hex(version) or version == "ff":
        raise ValueError(f"traceparent version {version!r} is not two lowercase hex digits other than ff")
    if version == "00" and len(value) != 55:
        raise ValueError(f"traceparent is {len(value)} characters; version 00 has 55")
    if len(value) > 55 and value[55] != "-":
        raise ValueError("traceparent of a later version has no '-' after its flags")
    if value[2] != "-" or value[35] != "-" or value[52] != "-":
        raise ValueError("traceparent fields are not separated as version-traceid-parentid-flags")
    trace_id, span_id, flags = value[3:35], value[36:52], value[53:55]
    for name, field in (("trace-id", trace_id), ("parent-id", span_id), ("trace-flags", flags)):
        if not _is_hex(field):
            raise ValueError(f"traceparent {name} {field!r} is not lowercase hex")
    if trace_id == "0" * 32:
        raise ValueError("traceparent trace-id is all zeros")
    if span_id == "0" * 16:
        raise ValueError("traceparent parent-id is all zeros")
    return TraceContext(trace_id=trace_id, span_id=span_id, flags=flags)


def cap_tracestate(value: str) -> str | None:
    """The tracestate as it is passed on: at most 32 members and 512 characters (W3C's truncation order)."""
    members = [member.strip(" \t") for member in value.split(",")]
    members = [member for member in members if member][:TRACESTATE_MAX_MEMBERS]
    if len(",".join(members)) > TRACESTATE_MAX_CHARS:
        members = [member for member in members if len(member) <= _TRACESTATE_LONG_MEMBER]
        while members and len(",".join(members)) > TRACESTATE_MAX_CHARS:
            members.pop()
    return ",".join(members) or None


def context_from_headers(headers: Any, *, message_id: str | None = None) -> TraceContext | None:
    """The request's trace context from its AMQP headers (str or bytes values); None when absent or invalid.

    An invalid traceparent is ignored (and its tracestate with it, as W3C says) with one debug line.
    """
    if not isinstance(headers, Mapping):
        return None
    raw = _header(headers, TRACEPARENT)
    if raw is None:
        return None
    try:
        if not isinstance(raw, str):
            raise ValueError(f"traceparent is a {type(raw).__name__}, not a string")
        context = parse_traceparent(raw)
    except ValueError as exc:
        log.debug("traceparent_ignored", message_id=message_id, error=str(exc), value=repr(raw)[:80])
        return None
    state = _header(headers, TRACESTATE)
    if isinstance(state, str):
        context = replace(context, tracestate=cap_tracestate(state[: 8 * TRACESTATE_MAX_CHARS]))
    return context


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace-id of a traceparent this module rendered (None for None)."""
    return traceparent[3:35] if traceparent else None


def _header(headers: Mapping[Any, Any], name: str) -> Any:
    value = headers.get(name)
    if value is None:
        for key, candidate in headers.items():
            if isinstance(key, str) and key.lower() == name:
                value = candidate
                break
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("ascii")
        except UnicodeDecodeError:
            return value
    return value


def _is_hex(text: str) -> bool:
    return all(char in _HEX for char in text)


# -- OpenTelemetry, when installed and configured ------------------------------------------------------------

_override_provider: Any = None


def use_tracer_provider(provider: Any) -> None:
    """Use this OpenTelemetry TracerProvider instead of the global one (None: back to the global one).

    For hosts that embed the worker and keep their provider out of the global slot, and for tests.
    """
    global _override_provider  # noqa: PLW0603 -- one process-wide choice, like the OTel API's own global
    _override_provider = provider


_otel_api: Any = None  # the opentelemetry.trace module once imported; False when it is not installed


def _tracer() -> Any:
    """The OpenTelemetry tracer, or None when the API is not installed or no provider is configured.

    Asked per job (cheap: the provider may be set after the worker starts); the import is tried once.
    """
    global _otel_api  # noqa: PLW0603 -- a cache of one import attempt
    if _otel_api is None:
        try:
            from opentelemetry import trace  # noqa: PLC0415 -- the optional extra, imported only when present
        except ImportError:
            _otel_api = False
        else:
            _otel_api = trace
    if _otel_api is False:
        return None
    trace = _otel_api
    provider = _override_provider or trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None  # the API's defaults: nobody configured an SDK, so spans would go nowhere
    return provider.get_tracer(_INSTRUMENTATION)


def _otel_parent(context: TraceContext | None) -> Any:
    """The incoming trace context as an OpenTelemetry Context (a remote parent), or None for a new trace."""
    if context is None:
        return None
    from opentelemetry import trace  # noqa: PLC0415

    parent = trace.SpanContext(
        trace_id=int(context.trace_id, 16),
        span_id=int(context.span_id, 16),
        is_remote=True,
        trace_flags=trace.TraceFlags(int(context.flags, 16)),
        trace_state=trace.TraceState.from_header([context.tracestate]) if context.tracestate else None,
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(parent))


def _context_of(span: Any, tracestate: str | None) -> TraceContext:
    span_context = span.get_span_context()
    return TraceContext(
        trace_id=format(span_context.trace_id, "032x"),
        span_id=format(span_context.span_id, "016x"),
        flags=format(int(span_context.trace_flags), "02x"),
        tracestate=tracestate,
    )


def _set_error(span: Any, error: BaseException | str) -> None:
    from opentelemetry.trace import Status, StatusCode  # noqa: PLC0415

    if isinstance(error, BaseException):
        code = getattr(error, "code", None)
        span.set_attribute("error.type", code if isinstance(code, str) else type(error).__qualname__)
        message = getattr(error, "message", None) or str(error)
        span.set_status(Status(StatusCode.ERROR, message[:500]))
    else:
        span.set_attribute("error.type", error)
        span.set_status(Status(StatusCode.ERROR, error))


# -- one job's trace ----------------------------------------------------------------------------------------

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
            _set_error(self._span, code or status)

    @contextlib.contextmanager
    def edge_call(self, name: str, attributes: Mapping[str, Any]) -> Iterator[EdgeCall]:
        """One edge call: what it carries (a CLIENT span's traceparent with OpenTelemetry, else a child's)."""
        if self.context is None:
            yield EdgeCall(None)
            return
        if not self.recording:
            yield EdgeCall(self.context.child().traceparent)
            return
        from opentelemetry import trace  # noqa: PLC0415

        grpc = "rpc.method" in attributes
        with self._tracer.start_as_current_span(
            name,
            context=trace.set_span_in_context(self._span),
            kind=trace.SpanKind.CLIENT,
            attributes=dict(attributes),
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            call = EdgeCall(_context_of(span, self.context.tracestate).traceparent)
            try:
                yield call
            except Exception as exc:
                _set_error(span, exc)
                if grpc and isinstance(exc, JobNotFound | ModelNotFound):
                    span.set_attribute("rpc.status_code", "NOT_FOUND")
                raise
            if grpc:
                span.set_attribute("rpc.status_code", call.status_code)


class EdgeCall:
    """One edge call of a job: the traceparent it carries, and (gRPC) the status the edge answered."""

    __slots__ = ("status_code", "traceparent")

    def __init__(self, traceparent: str | None) -> None:
        self.traceparent = traceparent
        self.status_code = "OK"  # NOT_FOUND when a look found no results yet, or a cancel no job


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
    tracer = _tracer()
    span = None
    if tracer is None:
        job = JobTrace(incoming.child() if incoming is not None else None)
    else:
        span = _start_consumer_span(tracer, properties, incoming, queue=queue, body_size=body_size)
        job = JobTrace(_context_of(span, incoming.tracestate if incoming else None), span=span, tracer=tracer)
    token = _current.set(job)
    try:
        with structlog.contextvars.bound_contextvars(**job.log_fields), _use_span(span):
            yield job
    except BaseException as exc:
        if span is not None:
            _set_error(span, exc)
        raise
    finally:
        _current.reset(token)
        if span is not None:
            span.end()


def _start_consumer_span(
    tracer: Any, properties: Any, incoming: TraceContext | None, *, queue: str, body_size: int
) -> Any:
    """The CONSUMER span `process <queue>` of the messaging conventions (RabbitMQ), parented on the request."""
    from opentelemetry import trace  # noqa: PLC0415

    attributes: dict[str, Any] = {
        "messaging.system": "rabbitmq",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        # Requests come through the default exchange (contract §1): the routing key is the queue's name, and
        # the destination is named by the queue alone (the exchange is empty, the routing key the same).
        "messaging.destination.name": queue,
        "messaging.rabbitmq.destination.routing_key": queue,
        "messaging.message.body.size": body_size,
    }
    message_id = _text(getattr(properties, "message_id", None))
    if message_id:
        attributes["messaging.message.id"] = message_id
    correlation_id = _text(getattr(properties, "correlation_id", None))
    if correlation_id:
        attributes["messaging.message.conversation_id"] = correlation_id
    return tracer.start_span(
        f"process {queue}", context=_otel_parent(incoming), kind=trace.SpanKind.CONSUMER, attributes=attributes
    )


def _use_span(span: Any) -> contextlib.AbstractContextManager[Any]:
    """The span as OpenTelemetry's current one (for instrumentation nested in the job), ended by the caller."""
    if span is None:
        return contextlib.nullcontext()
    from opentelemetry import trace  # noqa: PLC0415

    manager: contextlib.AbstractContextManager[Any] = trace.use_span(
        span, end_on_exit=False, record_exception=False, set_status_on_exception=False
    )
    return manager


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None if value is None else str(value)


# -- the edge client, traced ------------------------------------------------------------------------------------


class TracedEdgeClient:
    """An EdgeClient whose calls carry the current job's trace (and make its CLIENT spans); else unchanged.

    Each call carries a child traceparent and the job's tracestate; a call given its own `traceparent` keeps
    it. A chunked submission is one call (and one span) for its whole upload, named after the request that
    opens the job.
    """

    def __init__(self, inner: EdgeClient) -> None:
        self.inner = inner
        self._describe = _describer(inner)

    def features(self) -> Features:
        return self.inner.features()

    def answers(self) -> tuple[bool, str]:
        return self.inner.answers()

    def last_sent_at(self) -> float | None:
        return self.inner.last_sent_at()

    def close(self) -> None:
        self.inner.close()

    @contextlib.contextmanager
    def _call(
        self, call: str, job_id: str | None, traceparent: str | None, tracestate: str | None
    ) -> Iterator[tuple[str | None, str | None, EdgeCall | None]]:
        """What the call carries (the caller's own traceparent, else a child of the running job's), and the
        job's record of the call when there is one."""
        job = _current.get()
        if traceparent is not None or job is None or job.context is None:
            yield traceparent, tracestate, None
            return
        if not job.recording:  # no span to describe: only the child traceparent travels
            yield job.context.child().traceparent, job.context.tracestate, None
            return
        name, attributes = self._describe(call, job_id)
        with job.edge_call(name, attributes) as edge_call:
            yield edge_call.traceparent, job.context.tracestate, edge_call

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
        with self._call("submit", None, traceparent, tracestate) as (carried, state, _):
            return self.inner.submit_job(
                model_id=model_id,
                version=version,
                sources=sources,
                input_type=input_type,
                explain=explain,
                deadline=deadline,
                traceparent=carried,
                tracestate=state,
            )

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
        with self._call("submit", None, traceparent, tracestate) as (carried, state, _):
            return self.inner.submit_chunked(
                model_id=model_id,
                version=version,
                sources=sources,
                explain=explain,
                deadline=deadline,
                traceparent=carried,
                tracestate=state,
            )

    def get_job(
        self,
        job_id: str,
        *,
        deadline: float | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> EdgeJob:
        with self._call("status", job_id, traceparent, tracestate) as (carried, state, _):
            return self.inner.get_job(job_id, deadline=deadline, traceparent=carried, tracestate=state)

    def get_results(
        self,
        job_id: str,
        *,
        deadline: float | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> EdgeResults | None:
        with self._call("results", job_id, traceparent, tracestate) as (carried, state, edge_call):
            results = self.inner.get_results(job_id, deadline=deadline, traceparent=carried, tracestate=state)
            if results is None and edge_call is not None:
                edge_call.status_code = "NOT_FOUND"  # not ready yet: the edge said so without an error
            return results

    def cancel_job(
        self, job_id: str, *, traceparent: str | None = None, tracestate: str | None = None
    ) -> EdgeJob | None:
        with self._call("cancel", job_id, traceparent, tracestate) as (carried, state, edge_call):
            canceled = self.inner.cancel_job(job_id, traceparent=carried, tracestate=state)
            if canceled is None and edge_call is not None:
                edge_call.status_code = "NOT_FOUND"  # the edge no longer knows the job
            return canceled

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
        with self._call("list", None, traceparent, tracestate) as (carried, state, _):
            return self.inner.list_jobs(
                deadline=deadline, traceparent=carried, tracestate=state, model_id=model_id, start=start, end=end
            )


def traced_edge(edge: EdgeClient) -> EdgeClient:
    """The edge client the job lifecycle uses: its calls carry the running job's trace."""
    return edge if isinstance(edge, TracedEdgeClient) else TracedEdgeClient(edge)


# Per call: the HTTP method and URL template of the gateway, the gRPC method of the API.
_HTTP_CALLS = {
    "submit": ("POST", "/api/jobs"),
    "status": ("GET", "/api/jobs/{jobIdentifier}"),
    "results": ("GET", "/api/results/{jobIdentifier}"),
    "cancel": ("DELETE", "/api/jobs/{jobIdentifier}"),
    "list": ("GET", "/api/jobs"),
}
_GRPC_CALLS = {
    "submit": "jobs.v1.JobService/SubmitJob",
    "status": "jobs.v1.JobService/GetJob",
    "results": "results.v1.ResultsService/GetResults",
    "cancel": "jobs.v1.JobService/CancelJob",
    "list": "jobs.v1.JobService/GetJobs",
}


def _describer(inner: EdgeClient) -> Any:
    """A function (call, job_id) -> (span name, attributes) for the inner client's transport."""
    base_url = getattr(inner, "base_url", None)
    if isinstance(base_url, str):
        split = urllib.parse.urlsplit(base_url)
        host = split.hostname or ""
        port = split.port or (443 if split.scheme == "https" else 80)
        netloc = f"[{host}]" if ":" in host else host
        if split.port is not None:
            netloc += f":{split.port}"
        clean_base = urllib.parse.urlunsplit((split.scheme, netloc, split.path.rstrip("/"), "", ""))

        def http(call: str, job_id: str | None) -> tuple[str, dict[str, Any]]:
            method, template = _HTTP_CALLS[call]
            path = template.replace("{jobIdentifier}", urllib.parse.quote(job_id or "", safe=""))
            return f"{method} {template}", {
                "http.request.method": method,
                "server.address": host,
                "server.port": port,
                "url.full": clean_base + path,  # never the credentials: the api key travels in a header
                "url.template": template,
            }

        return http
    target = getattr(inner, "target", None)
    if isinstance(target, str):
        host, _, port_text = target.rpartition(":")
        address = host.strip("[]") if port_text.isdigit() else target

        def grpc(call: str, _job_id: str | None) -> tuple[str, dict[str, Any]]:
            method = _GRPC_CALLS[call]
            attributes: dict[str, Any] = {"rpc.system.name": "grpc", "rpc.method": method, "server.address": address}
            if port_text.isdigit():
                attributes["server.port"] = int(port_text)
            return method, attributes

        return grpc

    def unknown(call: str, _job_id: str | None) -> tuple[str, dict[str, Any]]:
        return f"edge {call}", {}

    return unknown
