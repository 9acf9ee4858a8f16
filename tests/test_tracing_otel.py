"""OpenTelemetry spans (contract §7): with a tracer provider configured, a job is a CONSUMER span
`process <queue>` and each edge call a CLIENT span under it, as the semantic conventions name them.

The lifecycle runs in this process (a JobRunner handed deliveries, as in test_job_runner.py) against the real
emulator over sockets, with OpenTelemetry's in-memory exporter; the emulator says what each call carried.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import msgpack
import pika
import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.test_job_runner import job_settings
from worker import tracing
from worker.edge import EdgeClient, HttpEdgeClient
from worker.emulator import EdgeEmulator, EmulatorConfig
from worker.jobs import EdgeGate, JobRunner, Outcome
from worker.journal import Journal
from worker.messages import reply_properties_fields, route_from_properties
from worker.metrics import Metrics

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
QUEUE = "edge.jobs.traced"


@dataclass
class Rig:
    runner: JobRunner
    emulator: EdgeEmulator
    exporter: InMemorySpanExporter
    face: str
    body_size: int = 0

    def deliver(self, model: dict[str, str], *, headers: dict[str, Any] | None) -> tuple[str, Outcome]:
        message_id = uuid.uuid4().hex
        props = pika.BasicProperties(
            message_id=message_id, correlation_id=f"c-{message_id}", content_type="application/msgpack", headers=headers
        )
        body = msgpack.packb({"model": model, "sources": {"s": {"i": b"abc"}}}, use_bin_type=True)
        self.body_size = len(body)
        return message_id, self.runner.handle(body, props, route_from_properties(props))

    def carried(self) -> list[str | None]:
        """The traceparent each of the job's edge calls carried, as the emulator saw them."""
        return [entry["traceparent"] for entry in self.emulator.stats()["traces"] if "features" not in entry["call"]]


def make_client(emulator: EdgeEmulator, face: str) -> EdgeClient:
    if face == "http":
        return HttpEdgeClient(base_url=emulator.url, request_timeout_s=10, max_attempts=2)
    from worker.edge.grpc import GrpcEdgeClient

    assert emulator.grpc_target is not None
    return GrpcEdgeClient(target=emulator.grpc_target, request_timeout_s=10, max_attempts=2)


@pytest.fixture
def provider() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    made = TracerProvider()
    made.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_tracer_provider(made)
    try:
        yield made, exporter
    finally:
        tracing.use_tracer_provider(None)
        made.shutdown()


def build_rig(tmp_path: Path, face: str, exporter: InMemorySpanExporter) -> Iterator[Rig]:
    with EdgeEmulator(EmulatorConfig(port=0, grpc_port=0, latency_s=0.02, capacity=4)) as emulator:
        client = make_client(emulator, face)
        gate = EdgeGate(client)
        journal = Journal(tmp_path / "journal.sqlite3", retention_s=600)
        settings = replace(job_settings(upload="embedded"), queue=QUEUE)
        runner = JobRunner(edge=client, gate=gate, journal=journal, settings=settings, metrics=Metrics())
        try:
            yield Rig(runner, emulator, exporter, face)
        finally:
            runner.stop()
            gate.stop()
            journal.close()
            client.close()


@pytest.fixture(params=["http", "grpc"])
def rig(
    request: pytest.FixtureRequest, tmp_path: Path, provider: tuple[TracerProvider, InMemorySpanExporter]
) -> Iterator[Rig]:
    yield from build_rig(tmp_path, request.param, provider[1])


def spans_by_kind(exporter: InMemorySpanExporter) -> tuple[ReadableSpan, list[ReadableSpan]]:
    spans = exporter.get_finished_spans()
    consumers = [span for span in spans if span.kind == SpanKind.CONSUMER]
    assert len(consumers) == 1, [span.name for span in spans]
    clients = [span for span in spans if span.kind == SpanKind.CLIENT]
    assert len(consumers) + len(clients) == len(spans)
    return consumers[0], clients


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def test_a_job_is_a_consumer_span_with_a_client_span_per_edge_call(rig: Rig) -> None:
    with structlog.testing.capture_logs() as logs:
        message_id, outcome = rig.deliver({"identifier": "sha256", "version": "1.0.0"}, headers={
            "traceparent": TRACEPARENT, "tracestate": "rojo=00f067aa0ba902b7"})  # fmt: skip
    assert outcome.status == "COMPLETE"
    consumer, clients = spans_by_kind(rig.exporter)

    assert consumer.name == f"process {QUEUE}"
    assert consumer.parent is not None and consumer.parent.is_remote
    assert format(consumer.parent.span_id, "016x") == PARENT_ID
    trace_id, job_span = hex_ids(consumer)
    assert trace_id == TRACE_ID
    assert dict(consumer.attributes or {}) == {
        "messaging.system": "rabbitmq",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": QUEUE,
        "messaging.rabbitmq.destination.routing_key": QUEUE,
        "messaging.message.id": message_id,
        "messaging.message.conversation_id": f"c-{message_id}",
        "messaging.message.body.size": rig.body_size,
    }
    assert consumer.status.status_code == StatusCode.UNSET

    assert len(clients) >= 2  # the submission, then the looks
    for span in clients:
        assert span.parent is not None and format(span.parent.span_id, "016x") == job_span
        assert hex_ids(span)[0] == TRACE_ID
        assert span.status.status_code == StatusCode.UNSET
        attributes = dict(span.attributes or {})
        if rig.face == "http":
            assert span.name in {"POST /api/jobs", "GET /api/results/{jobIdentifier}", "GET /api/jobs/{jobIdentifier}"}
            method, template = span.name.split(" ")
            assert attributes["http.request.method"] == method
            assert attributes["url.template"] == template
            assert str(attributes["url.full"]).startswith(rig.emulator.url + "/api/")
            assert attributes["server.address"] == "127.0.0.1"
            assert attributes["server.port"] == rig.emulator.port
        else:
            assert span.name in {"jobs.v1.JobService/SubmitJob", "results.v1.ResultsService/GetResults",
                                 "jobs.v1.JobService/GetJob"}  # fmt: skip
            assert attributes["rpc.system.name"] == "grpc"
            assert attributes["rpc.method"] == span.name
            assert attributes["rpc.status_code"] == "OK"
            assert attributes["server.port"] == rig.emulator.grpc_port
    assert clients[0].name in {"POST /api/jobs", "jobs.v1.JobService/SubmitJob"}

    # What the edge received is each client span's own traceparent, in order.
    assert rig.carried() == [f"00-{TRACE_ID}-{hex_ids(span)[1]}-01" for span in clients]
    assert {entry["tracestate"] for entry in rig.emulator.stats()["traces"]} == {"rojo=00f067aa0ba902b7"}
    # The replies carry the consumer span's, with the producer's tracestate.
    headers = reply_properties_fields({"status": "COMPLETE", "final": True}, outcome.route)["headers"]
    assert headers["traceparent"] == f"00-{TRACE_ID}-{job_span}-01"
    assert headers["tracestate"] == "rojo=00f067aa0ba902b7"
    job_logs = [entry for entry in logs if entry.get("message_id") == message_id]
    assert job_logs and all((e["trace_id"], e["span_id"]) == (TRACE_ID, job_span) for e in job_logs)


def test_a_failed_edge_call_ends_its_span_with_an_error(rig: Rig) -> None:
    _, outcome = rig.deliver({"identifier": "no-such-model", "version": "1.0.0"}, headers={"traceparent": TRACEPARENT})
    assert outcome.status == "ERROR"
    consumer, clients = spans_by_kind(rig.exporter)
    assert len(clients) == 1
    assert clients[0].status.status_code == StatusCode.ERROR
    assert dict(clients[0].attributes or {})["error.type"] == "MODEL_NOT_FOUND"
    assert "no-such-model" in (clients[0].status.description or "")
    assert consumer.status.status_code == StatusCode.ERROR
    assert dict(consumer.attributes or {})["error.type"] == "ERROR"


def test_with_opentelemetry_configured_a_request_without_traceparent_starts_a_trace(rig: Rig) -> None:
    _, outcome = rig.deliver({"identifier": "sha256", "version": "1.0.0"}, headers=None)
    consumer, clients = spans_by_kind(rig.exporter)
    assert consumer.parent is None
    trace_id, job_span = hex_ids(consumer)
    # The SDK's flags: sampled, and (W3C Trace Context level 2) "random" when it made the trace-id itself.
    context = consumer.get_span_context()
    assert context is not None
    flags = format(int(context.trace_flags), "02x")
    assert outcome.route.traceparent == f"00-{trace_id}-{job_span}-{flags}"
    assert all(hex_ids(span)[0] == trace_id for span in clients)
    assert rig.carried() == [f"00-{trace_id}-{hex_ids(span)[1]}-{flags}" for span in clients]


@pytest.mark.parametrize("face", ["http", "grpc"])
def test_without_a_configured_provider_no_span_is_made_and_the_trace_still_travels(tmp_path: Path, face: str) -> None:
    """The API's default provider (a proxy nobody configured) records nothing: the W3C values still flow."""
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)  # this process never set one
    exporter = InMemorySpanExporter()
    for rig in build_rig(tmp_path, face, exporter):
        _, outcome = rig.deliver({"identifier": "sha256", "version": "1.0.0"}, headers={"traceparent": TRACEPARENT})
        assert outcome.status == "COMPLETE"
        assert exporter.get_finished_spans() == ()
        assert outcome.route.traceparent is not None
        job = tracing.parse_traceparent(outcome.route.traceparent)
        carried = [tracing.parse_traceparent(value or "") for value in rig.carried()]
        assert carried and {context.trace_id for context in carried} == {TRACE_ID}
        span_ids = {context.span_id for context in carried}
        assert len(span_ids) == len(carried) and not span_ids & {job.span_id, PARENT_ID}
        _, outcome = rig.deliver({"identifier": "sha256", "version": "1.0.0"}, headers=None)
        assert outcome.route.traceparent is None


def test_grpc_client_spans_say_the_status_the_edge_answered(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """OK for an answer; NOT_FOUND for a job the edge does not know (an error only where the call raises)."""
    from types import SimpleNamespace

    from worker.errors import JobNotFound

    exporter = provider[1]
    with EdgeEmulator(EmulatorConfig(port=0, grpc_port=0, latency_s=5.0, capacity=4)) as emulator:
        edge = tracing.traced_edge(make_client(emulator, "grpc"))
        props = SimpleNamespace(headers={"traceparent": TRACEPARENT}, message_id="m", correlation_id=None)
        try:
            with tracing.job_trace(props, queue=QUEUE, body_size=1):
                job = edge.submit_job(model_id="sha256", version="1.0.0", sources={"s": {"i": b"x"}},
                                      input_type="embedded", explain=False)  # fmt: skip
                running = edge.get_results(job.job_identifier)
                assert running is not None and not running.finished  # still running: an answer
                assert edge.get_results("no-such-job") is None  # not found, which is no error to the lifecycle
                with pytest.raises(JobNotFound):
                    edge.get_job("no-such-job")
                assert edge.cancel_job("no-such-job") is None
                edge.cancel_job(job.job_identifier)
        finally:
            edge.close()
    _, clients = spans_by_kind(exporter)
    seen = [(span.name, dict(span.attributes or {})["rpc.status_code"], span.status.status_code) for span in clients]
    assert seen == [
        ("jobs.v1.JobService/SubmitJob", "OK", StatusCode.UNSET),
        ("results.v1.ResultsService/GetResults", "OK", StatusCode.UNSET),
        ("results.v1.ResultsService/GetResults", "NOT_FOUND", StatusCode.UNSET),
        ("jobs.v1.JobService/GetJob", "NOT_FOUND", StatusCode.ERROR),
        ("jobs.v1.JobService/CancelJob", "NOT_FOUND", StatusCode.UNSET),
        ("jobs.v1.JobService/CancelJob", "OK", StatusCode.UNSET),
    ]
