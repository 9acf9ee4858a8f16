"""Traces (contract §7): a request's W3C traceparent continues into its edge calls, its replies and its logs.

The parsing rules against the W3C Trace Context text (pure), then the real worker process against the real
broker and the emulator (both faces), which records the traceparent each edge call carried.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import structlog

from tests.conftest import Producer, ReplyCollector, WorkerProcess, wait_until
from worker.emulator import EdgeEmulator, EmulatorConfig
from worker.logs import configure_logging
from worker.tracing import TraceContext, cap_tracestate, context_from_headers, job_trace, parse_traceparent

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
TRACESTATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
SHA_MODEL = {"identifier": "sha256", "version": "1.0.0"}

# -- the W3C rules (pure) -----------------------------------------------------------------------------


def test_a_version_00_traceparent_is_read_field_by_field() -> None:
    context = parse_traceparent(TRACEPARENT)
    assert context == TraceContext(trace_id=TRACE_ID, span_id=PARENT_ID, flags="01")
    assert context.traceparent == TRACEPARENT
    child = context.child()
    assert (child.trace_id, child.flags) == (TRACE_ID, "01")
    assert child.span_id != PARENT_ID and len(child.span_id) == 16 and int(child.span_id, 16) != 0


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (TRACEPARENT.upper(), "lowercase hex"),
        (TRACEPARENT[:-1], "55"),
        (TRACEPARENT + "-extra", "55"),  # version 00 is exactly 55 characters
        (f"00-{'0' * 32}-{PARENT_ID}-01", "trace-id is all zeros"),
        (f"00-{TRACE_ID}-{'0' * 16}-01", "parent-id is all zeros"),
        (f"ff-{TRACE_ID}-{PARENT_ID}-01", "version"),
        (f"00_{TRACE_ID}_{PARENT_ID}_01", "separated"),
        (f"00-{TRACE_ID}-{PARENT_ID}-0g", "trace-flags"),
        (f"00-{TRACE_ID[:-1]}x-{PARENT_ID}-01", "trace-id"),
        ("", "characters"),
    ],
)
def test_an_invalid_traceparent_is_refused_naming_what_is_wrong(value: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_traceparent(value)


def test_a_later_version_is_read_by_its_first_four_fields() -> None:
    context = parse_traceparent(f"cc-{TRACE_ID}-{PARENT_ID}-01-what-comes-later")
    assert (context.trace_id, context.span_id, context.traceparent[:2]) == (TRACE_ID, PARENT_ID, "00")
    with pytest.raises(ValueError, match="'-' after its flags"):
        parse_traceparent(f"cc-{TRACE_ID}-{PARENT_ID}-01x")


def test_headers_may_be_bytes_and_tracestate_follows_a_valid_traceparent_only() -> None:
    context = context_from_headers({"traceparent": TRACEPARENT.encode(), "tracestate": TRACESTATE.encode()})
    assert context is not None and context.tracestate == TRACESTATE
    assert context_from_headers({"traceparent": TRACEPARENT.upper(), "tracestate": TRACESTATE}) is None
    assert context_from_headers({"traceparent": 7}) is None
    assert context_from_headers({"tracestate": TRACESTATE}) is None
    assert context_from_headers(None) is None


def test_an_invalid_traceparent_is_logged_once_at_debug_naming_the_message() -> None:
    with structlog.testing.capture_logs() as logs:
        assert context_from_headers({"traceparent": TRACEPARENT.upper()}, message_id="m-1") is None
    assert [(entry["event"], entry["log_level"], entry["message_id"]) for entry in logs] == [
        ("traceparent_ignored", "debug", "m-1")
    ]
    assert "lowercase hex" in logs[0]["error"]


def test_tracestate_is_capped_as_w3c_says() -> None:
    long_member = "big=" + "x" * 200
    members = [f"k{i}=v{i:0>6}" for i in range(60)]  # 60 members of 10 characters
    capped = cap_tracestate(",".join([members[0], long_member, *members[1:]]))
    assert capped is not None
    kept = capped.split(",")
    assert len(kept) <= 32 and len(capped) <= 512
    assert long_member not in kept  # long members go first
    assert kept == members[: len(kept)]  # then from the end
    assert cap_tracestate(" , ") is None


# -- the real worker, broker and emulator -------------------------------------------------------------------


@pytest.fixture(params=["http", "grpc"])
def edge(request: pytest.FixtureRequest) -> Iterator[tuple[EdgeEmulator, str]]:
    """The emulator, and the edge.url a worker reaches it by (its HTTP face or its gRPC face)."""
    with EdgeEmulator(EmulatorConfig(port=0, grpc_port=0, latency_s=0.02, capacity=4)) as emulator:
        url = emulator.url if request.param == "http" else f"grpc://{emulator.grpc_target}"
        yield emulator, url


def job_calls(emulator: EdgeEmulator) -> list[dict[str, Any]]:
    """The emulator's record of the edge calls a job made (the features probe is not a job's call)."""
    return [entry for entry in emulator.stats()["traces"] if "features" not in entry["call"]]


def run_one(
    producer: Producer, collector: ReplyCollector, headers: dict[str, Any] | None
) -> tuple[str, list[tuple[Any, dict[str, Any]]]]:
    """Publish one request that asks for the SUBMITTED update; returns its message_id and its replies."""
    message_id = uuid.uuid4().hex
    producer.publish({"model": SHA_MODEL, "sources": {"s": {"i": b"abc"}}, "updates": True}, message_id=message_id,
                     headers=headers)  # fmt: skip
    wait_until(lambda: collector.poll() and message_id in collector.finals(), 20, what="the final reply")
    replies = [(props, reply) for props, reply in collector.all if props.correlation_id == message_id]
    return message_id, replies


def job_lines(worker: WorkerProcess, message_id: str) -> list[dict[str, Any]]:
    lines = [line for line in worker.lines() if line.get("message_id") == message_id]
    assert any(line["event"] == "job_finished" for line in lines)
    return lines


def test_a_traceparent_continues_into_edge_calls_replies_and_logs(
    edge: tuple[EdgeEmulator, str],
    worker_factory: Callable[..., WorkerProcess],
    producer: Producer,
    collector: ReplyCollector,
) -> None:
    emulator, url = edge
    worker = worker_factory(url).start()
    emulator.reset_stats()
    message_id, replies = run_one(producer, collector, {"traceparent": TRACEPARENT, "tracestate": TRACESTATE})

    assert [reply["status"] for _, reply in replies] == ["SUBMITTED", "COMPLETE"]
    job_spans = set()
    for props, _ in replies:
        job = parse_traceparent(props.headers["traceparent"])
        assert (job.trace_id, job.flags) == (TRACE_ID, "01")
        assert job.span_id != PARENT_ID  # the job's span, a child of the producer's
        assert props.headers["tracestate"] == TRACESTATE
        job_spans.add(job.span_id)
    assert len(job_spans) == 1  # one job, one span, on every reply

    calls = job_calls(emulator)
    assert {entry["face"] for entry in calls} == {"grpc" if url.startswith("grpc://") else "http"}
    assert len(calls) >= 2  # the submission and at least one look
    spans = [parse_traceparent(entry["traceparent"]) for entry in calls]
    assert {span.trace_id for span in spans} == {TRACE_ID}
    span_ids = [span.span_id for span in spans]
    assert len(set(span_ids)) == len(span_ids)  # a new span for each call
    assert not set(span_ids) & (job_spans | {PARENT_ID})
    assert {entry["tracestate"] for entry in calls} == {TRACESTATE}  # passed on unchanged

    lines = job_lines(worker, message_id)
    assert all(line.get("trace_id") == TRACE_ID for line in lines), [line["event"] for line in lines]
    assert {line.get("span_id") for line in lines} == job_spans


@pytest.mark.parametrize(
    "headers",
    [None, {"traceparent": TRACEPARENT.upper(), "tracestate": TRACESTATE}, {"traceparent": b"\xff\x00 not one"}],
    ids=["absent", "invalid", "not-ascii"],
)
def test_without_a_valid_traceparent_nothing_is_invented(
    headers: dict[str, Any] | None,
    emulator: EdgeEmulator,
    worker_factory: Callable[..., WorkerProcess],
    producer: Producer,
    collector: ReplyCollector,
) -> None:
    worker = worker_factory(emulator.url).start()
    emulator.reset_stats()
    message_id, replies = run_one(producer, collector, headers)

    assert [reply["status"] for _, reply in replies] == ["SUBMITTED", "COMPLETE"]  # the job still completes
    for props, _ in replies:
        assert "traceparent" not in (props.headers or {}) and "tracestate" not in (props.headers or {})
    calls = job_calls(emulator)
    assert calls and all(entry["traceparent"] is None and entry["tracestate"] is None for entry in calls)
    assert all("trace_id" not in line for line in job_lines(worker, message_id))


def test_the_emulator_records_what_each_call_carried_on_both_faces(edge: tuple[EdgeEmulator, str]) -> None:
    emulator, url = edge
    from worker.config import EdgeConfig
    from worker.edge import make_edge_client

    client = make_edge_client(EdgeConfig(url=url, request_timeout=5, max_attempts=1))
    try:
        emulator.reset_stats()
        job = client.submit_job(model_id="sha256", version="1.0.0", sources={"s": {"i": b"x"}},
                                input_type="embedded", explain=False, traceparent=TRACEPARENT)  # fmt: skip
        client.get_job(job.job_identifier, traceparent=TRACEPARENT, tracestate=TRACESTATE)
        client.get_job(job.job_identifier, tracestate=TRACESTATE)  # a tracestate alone means nothing: not sent
    finally:
        client.close()
    calls = job_calls(emulator)
    assert [(entry["traceparent"], entry["tracestate"]) for entry in calls] == [
        (TRACEPARENT, None),
        (TRACEPARENT, TRACESTATE),
        (None, None),
    ]


def test_without_opentelemetry_installed_the_w3c_values_still_flow() -> None:
    """A process where `import opentelemetry` fails (the otel extra absent): no spans, the trace still travels."""
    script = f"""
import sys
from types import SimpleNamespace
sys.modules["opentelemetry"] = None  # its import now fails, as if the extra were not installed
from worker import tracing
props = SimpleNamespace(headers={{"traceparent": "{TRACEPARENT}"}}, message_id="m", correlation_id=None)
with tracing.job_trace(props, queue="q", body_size=1) as job:
    assert job.context is not None
    with job.edge_call("edge submit", {{}}) as carried:
        print(job.context.traceparent, carried.traceparent, tracing._tracer())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    job_span, carried, tracer = done.stdout.split()
    job, call = parse_traceparent(job_span), parse_traceparent(carried)
    assert (job.trace_id, call.trace_id) == (TRACE_ID, TRACE_ID)
    assert len({PARENT_ID, job.span_id, call.span_id}) == 3
    assert tracer == "None"


def test_every_line_logged_on_the_jobs_thread_carries_its_trace() -> None:
    """Lines from modules that know nothing of the job (the edge client's retries) carry trace_id too."""
    out = io.StringIO()
    configure_logging("debug", "json", stream=out)
    other = structlog.get_logger("worker.edge")
    props = SimpleNamespace(headers={"traceparent": TRACEPARENT}, message_id="m", correlation_id=None)
    with job_trace(props, queue="q", body_size=1) as job:
        other.debug("edge_call_retry", call="status")
    other.info("after_the_job")
    assert job.context is not None
    inside, after = (json.loads(line) for line in out.getvalue().splitlines())
    assert (inside["event"], inside["trace_id"], inside["span_id"]) == (
        "edge_call_retry",
        TRACE_ID,
        job.context.span_id,
    )
    assert after["event"] == "after_the_job" and "trace_id" not in after
