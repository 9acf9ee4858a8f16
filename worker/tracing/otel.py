"""OpenTelemetry spans, when the optional `otel` extra is installed and a tracer provider configured.

A job is a CONSUMER span `process <queue>` and each of its edge calls a CLIENT span under it, named and
attributed as the messaging, HTTP and RPC semantic conventions say. Without a provider nothing is recorded,
and without the extra nothing is imported: every `opentelemetry` import here is inside a function that runs
only once `tracer()` has found one.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from worker.edge import EdgeClient
from worker.errors import JobNotFound, ModelNotFound
from worker.tracing.context import TraceContext

_INSTRUMENTATION = "edge-worker"

# What names an edge call's CLIENT span: (call, job_id) -> (span name, attributes).
Describer = Callable[[str, str | None], tuple[str, dict[str, Any]]]

# -- the tracer ------------------------------------------------------------------------------------------------

_override_provider: Any = None


def use_tracer_provider(provider: Any) -> None:
    """Use this OpenTelemetry TracerProvider instead of the global one (None: back to the global one).

    For hosts that embed the worker and keep their provider out of the global slot, and for tests.
    """
    global _override_provider  # noqa: PLW0603 -- one process-wide choice, like the OTel API's own global
    _override_provider = provider


_otel_api: Any = None  # the opentelemetry.trace module once imported; False when it is not installed


def tracer() -> Any:
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


# -- between the W3C values and OpenTelemetry's --------------------------------------------------------------


def _parent(context: TraceContext | None) -> Any:
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


def context_of(span: Any, tracestate: str | None) -> TraceContext:
    """The span's place in its trace as W3C values (the tracestate passed on as the request carried it)."""
    span_context = span.get_span_context()
    return TraceContext(
        trace_id=format(span_context.trace_id, "032x"),
        span_id=format(span_context.span_id, "016x"),
        flags=format(int(span_context.trace_flags), "02x"),
        tracestate=tracestate,
    )


def set_error(span: Any, error: BaseException | str) -> None:
    """An error status on the span, and `error.type`: the error's code, its class, or the outcome given."""
    from opentelemetry.trace import Status, StatusCode  # noqa: PLC0415

    if isinstance(error, BaseException):
        code = getattr(error, "code", None)
        span.set_attribute("error.type", code if isinstance(code, str) else type(error).__qualname__)
        message = getattr(error, "message", None) or str(error)
        span.set_status(Status(StatusCode.ERROR, message[:500]))
    else:
        span.set_attribute("error.type", error)
        span.set_status(Status(StatusCode.ERROR, error))


# -- the job's CONSUMER span -------------------------------------------------------------------------------------


def start_consumer_span(
    tracer: Any,
    incoming: TraceContext | None,
    *,
    queue: str,
    body_size: int,
    message_id: str | None,
    correlation_id: str | None,
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
    if message_id:
        attributes["messaging.message.id"] = message_id
    if correlation_id:
        attributes["messaging.message.conversation_id"] = correlation_id
    return tracer.start_span(
        f"process {queue}", context=_parent(incoming), kind=trace.SpanKind.CONSUMER, attributes=attributes
    )


def use_span(span: Any) -> contextlib.AbstractContextManager[Any]:
    """The span as OpenTelemetry's current one (for instrumentation nested in the job), ended by the caller."""
    if span is None:
        return contextlib.nullcontext()
    from opentelemetry import trace  # noqa: PLC0415

    manager: contextlib.AbstractContextManager[Any] = trace.use_span(
        span, end_on_exit=False, record_exception=False, set_status_on_exception=False
    )
    return manager


# -- an edge call's CLIENT span ----------------------------------------------------------------------------------


class EdgeCall:
    """One edge call of a job: the traceparent it carries, and (gRPC) the status the edge answered."""

    __slots__ = ("status_code", "traceparent")

    def __init__(self, traceparent: str | None) -> None:
        self.traceparent = traceparent
        self.status_code = "OK"  # NOT_FOUND when a look found no results yet, or a cancel no job


@contextlib.contextmanager
def client_span(
    tracer: Any, job_span: Any, name: str, attributes: Mapping[str, Any], *, tracestate: str | None
) -> Iterator[EdgeCall]:
    """A CLIENT span under the job's span for one edge call; the call carries its traceparent.

    A call that raises ends its span with an error status; a gRPC span records the status the edge answered.
    """
    from opentelemetry import trace  # noqa: PLC0415

    grpc = "rpc.method" in attributes
    with tracer.start_as_current_span(
        name,
        context=trace.set_span_in_context(job_span),
        kind=trace.SpanKind.CLIENT,
        attributes=dict(attributes),
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        call = EdgeCall(context_of(span, tracestate).traceparent)
        try:
            yield call
        except Exception as exc:
            set_error(span, exc)
            if grpc and isinstance(exc, JobNotFound | ModelNotFound):
                span.set_attribute("rpc.status_code", "NOT_FOUND")
            raise
        if grpc:
            span.set_attribute("rpc.status_code", call.status_code)


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


def describer(inner: EdgeClient) -> Describer:
    """How the CLIENT spans of this edge client's calls are named, by its transport (HTTP or gRPC)."""
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
