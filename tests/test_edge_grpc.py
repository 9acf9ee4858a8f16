"""The edge gRPC client (edge-http-api.md, "gRPC"), over real sockets: against a scripted grpcio server
(tests/grpc_stub.py) for what it sends and how it takes each status code."""

from __future__ import annotations

import base64
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("grpc")

import grpc
from google.protobuf import any_pb2, struct_pb2

from tests.conftest import Producer, ReplyCollector
from tests.grpc_stub import GrpcStub, Reply, StubServer
from tests.test_edge_client import follow, free_port
from worker._proto.common.v1 import common_pb2, errors_pb2
from worker._proto.jobs.v1 import jobs_pb2
from worker._proto.results.v1 import results_pb2
from worker.config import EdgeConfig
from worker.edge import EdgeResults, HttpEdgeClient, make_edge_client
from worker.edge.grpc import GrpcEdgeClient
from worker.errors import ConfigError, EdgeRejected, EdgeUnavailable, JobNotFound, ModelNotFound

MODEL = common_pb2.ModelIdentifier(identifier="m", version="1", name="M")


@pytest.fixture
def stub() -> Iterator[GrpcStub]:
    state = GrpcStub()
    server = StubServer(state)
    server.start()
    try:
        yield state
    finally:
        server.stop()


def client(target: str, **kwargs: Any) -> GrpcEdgeClient:
    kwargs.setdefault("request_timeout_s", 5.0)
    kwargs.setdefault("max_attempts", 3)
    return GrpcEdgeClient(target=target, **kwargs)


def receipt(
    job_id: str = "j1", status: jobs_pb2.JobStatus = jobs_pb2.SUBMITTED, **fields: Any
) -> jobs_pb2.JobSubmissionReceipt:
    return jobs_pb2.JobSubmissionReceipt(job_identifier=job_id, model=MODEL, status=status, **fields)


def details(job_id: str = "j1", status: str = "COMPLETE", **fields: Any) -> jobs_pb2.JobDetails:
    return jobs_pb2.JobDetails(job_identifier=job_id, model=MODEL, status=status, **fields)


# -- what the client sends ---------------------------------------------------------------------------


def test_embedded_submission_is_a_job_submission_with_data_uri_struct_values(stub: GrpcStub) -> None:
    stub.on(
        "SubmitJob",
        Reply(receipt(total_inputs=2, job_inputs=jobs_pb2.JobSubmissionReceipt.JobInputs(identifier=["a", "b"]))),
    )
    job = client(stub.target).submit_job(
        model_id="m",
        version="1",
        sources={"a": {"img": b"\x00\xff\x10"}, "b": {"cap": "snow"}},
        input_type="embedded",
        explain=True,
    )
    assert (job.job_identifier, job.status, job.total, job.job_inputs) == ("j1", "SUBMITTED", 2, ["a", "b"])
    assert job.model == {"identifier": "m", "version": "1", "name": "M"}
    assert not job.maybe_duplicated
    [call] = stub.seen("SubmitJob")
    request = call.request
    assert (request.model.identifier, request.model.version, request.explain) == ("m", "1", True)
    assert request.input.type == "embedded"
    uri = "data:application/octet-stream;base64,"
    assert dict(request.input.sources["a"]) == {"img": uri + base64.b64encode(b"\x00\xff\x10").decode()}
    assert dict(request.input.sources["b"]) == {"cap": uri + base64.b64encode(b"snow").decode()}


def test_text_submission_sends_plain_strings(stub: GrpcStub) -> None:
    stub.on("SubmitJob", Reply(receipt()))
    client(stub.target).submit_job(
        model_id="m", version="1", sources={"doc": {"t": "héllo ☃", "b": b"bytes"}}, input_type="text", explain=False
    )
    request = stub.seen("SubmitJob")[0].request
    assert request.input.type == "text"
    assert dict(request.input.sources["doc"]) == {"t": "héllo ☃", "b": "bytes"}


def test_traceparent_and_api_key_travel_as_metadata(stub: GrpcStub) -> None:
    stub.on("GetJob", Reply(details()))
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    client(stub.target, api_key="key-1").get_job("j1", traceparent=parent)
    client(stub.target).get_job("j1")
    first, second = stub.seen("GetJob")
    assert first.metadata["traceparent"] == parent
    assert first.metadata["authorization"] == "ApiKey key-1"
    assert first.request.identifier == "j1"
    assert "traceparent" not in second.metadata and "authorization" not in second.metadata


def test_chunked_upload_opens_a_job_appends_raw_bytes_and_closes_it(stub: GrpcStub) -> None:
    stub.on("GetFeatures", Reply(jobs_pb2.JobFeatures(input_chunk_maximum_size="1K", maximum_input_chunks=9)))
    stub.on("SubmitJob", Reply(receipt("open-1", status=jobs_pb2.OPEN)))
    stub.on("AddInputToJob", Reply(_empty()))
    stub.on("CloseJob", Reply(receipt("open-1", total_inputs=2)))
    data = bytes(range(256)) * 10  # 2560 bytes: three chunks of at most 1000
    job = client(stub.target).submit_chunked(
        model_id="m", version="1", sources={"a": {"x": data}, "b": {"y": ""}}, explain=True
    )
    assert (job.job_identifier, job.status, job.total) == ("open-1", "SUBMITTED", 2)
    opened = stub.seen("SubmitJob")[0].request
    assert not opened.HasField("input") and opened.explain and opened.model.identifier == "m"
    chunks = [c.request for c in stub.seen("AddInputToJob")]
    assert [(c.job_identifier, c.datasource_name, c.input_name, len(c.data)) for c in chunks] == [
        ("open-1", "a", "x", 1000),
        ("open-1", "a", "x", 1000),
        ("open-1", "a", "x", 560),
        ("open-1", "b", "y", 0),  # an empty input is one empty chunk
    ]
    assert b"".join(c.data for c in chunks[:3]) == data
    assert [c.request.identifier for c in stub.seen("CloseJob")] == ["open-1"]


def test_chunks_are_cut_to_fit_the_largest_message_configured(stub: GrpcStub) -> None:
    stub.on("GetFeatures", Reply(jobs_pb2.JobFeatures(input_chunk_maximum_size="8Mi")))
    assert client(stub.target).features().chunk_bytes == 8 << 20
    small = client(stub.target, max_message_bytes=1 << 20).features()
    assert small.chunk_bytes == (1 << 20) - 64 * 1024


def test_features_are_read_once_and_the_sdk_fallback_applies(stub: GrpcStub) -> None:
    stub.on("GetFeatures", Reply(jobs_pb2.JobFeatures(input_chunk_maximum_size="512Ki", maximum_inputs_per_job=7)))
    edge = client(stub.target)
    first = edge.features()
    assert (first.chunk_bytes, first.max_chunks, first.max_inputs) == (524_288, None, 7)
    assert edge.features() is first
    assert len(stub.seen("GetFeatures")) == 1
    stub.on("GetFeatures", Reply(jobs_pb2.JobFeatures()))
    assert client(stub.target).features().chunk_bytes == 1 << 20


# -- what the client makes of the answers ------------------------------------------------------------


def test_job_details_are_read_like_the_gateway_shows_them(stub: GrpcStub) -> None:
    answer = details(
        "j1",
        "COMPLETED",
        total=2,
        completed=1,
        failed=1,
        elapsed_time=900,
        job_inputs=[jobs_pb2.JobDetails.JobInputs(identifier="a"), jobs_pb2.JobDetails.JobInputs(identifier="b")],
    )
    answer.created_at.FromJsonString("2024-01-01T00:00:00.250Z")
    stub.on("GetJob", Reply(answer))
    job = client(stub.target).get_job("j1")
    assert (job.status, job.terminal, job.total, job.completed, job.failed) == ("COMPLETE", True, 2, 1, 1)
    assert (job.elapsed_ms, job.job_inputs, job.created_at) == (900, ["a", "b"], "2024-01-01T00:00:00.250Z")
    assert job.submitted_at is None  # unset, as the gateway shows it (null)


def test_results_struct_and_failure_any_become_dicts(stub: GrpcStub) -> None:
    results = results_pb2.Results(job_identifier="j1", total=3, completed=1, failed=2, finished=True, elapsed_time=12)
    output = struct_pb2.Struct()
    output.update({"label": "cat", "score": 0.5, "boxes": [1, 2]})
    results.results["a"].status = "SUCCESSFUL"
    results.results["a"].results.CopyFrom(output)
    packed = any_pb2.Any()
    packed.Pack(errors_pb2.Error(message="bad input", status="FAILED", status_code=500))
    results.failures["b"].CopyFrom(packed)
    results.failures["c"].CopyFrom(any_pb2.Any(type_url="type.googleapis.com/other.v1.Unknown", value=b"\x08\x01"))
    stub.on("GetResults", Reply(results))
    got = client(stub.target).get_results("j1")
    assert got == EdgeResults(
        finished=True,
        results={"a": {"label": "cat", "score": 0.5, "boxes": [1, 2]}},
        failures={
            "b": {
                "@type": "type.googleapis.com/common.v1.Error",
                "message": "bad input",
                "reportErrorUrl": "",
                "status": "FAILED",
                "statusCode": 500,
            },
            "c": {"@type": "type.googleapis.com/other.v1.Unknown"},
        },
        elapsed_ms=12,
        total=3,
        completed=1,
        failed=2,
    )
    assert got.job_status() == "COMPLETE"


def test_list_jobs_reads_the_summaries(stub: GrpcStub) -> None:
    listed = jobs_pb2.JobSummaryList(
        jobs=[jobs_pb2.JobSummary(job_identifier="j1", status="IN_PROGRESS", model=MODEL)], total_count=1
    )
    stub.on("GetJobs", Reply(listed))
    [summary] = client(stub.target).list_jobs()
    assert (summary.job_identifier, summary.status, summary.model) == (
        "j1",
        "IN_PROGRESS",
        {"identifier": "m", "version": "1"},
    )


# -- status codes -----------------------------------------------------------------------------------


def _submit(edge: GrpcEdgeClient) -> Any:
    return edge.submit_job(model_id="m", version="1", sources={"s": {"i": b"x"}}, input_type="embedded", explain=False)


def test_not_found_on_submit_is_model_not_found(stub: GrpcStub) -> None:
    stub.on("SubmitJob", Reply(code=grpc.StatusCode.NOT_FOUND, details="model m:1 does not exist"))
    with pytest.raises(ModelNotFound) as info:
        _submit(client(stub.target))
    assert info.value.code == "MODEL_NOT_FOUND"
    assert "m:1" in info.value.message and "does not exist" in info.value.message
    assert len(stub.seen("SubmitJob")) == 1


def test_resource_exhausted_as_too_large_on_submit_is_payload_too_large_and_not_retried(stub: GrpcStub) -> None:
    message = "grpc: received message larger than max (4266784 vs. 4194304)"
    stub.on("SubmitJob", Reply(code=grpc.StatusCode.RESOURCE_EXHAUSTED, details=message))
    with pytest.raises(EdgeRejected) as info:
        _submit(client(stub.target))
    assert info.value.code == "PAYLOAD_TOO_LARGE"
    assert "larger than max" in info.value.message
    assert len(stub.seen("SubmitJob")) == 1


def test_a_message_over_the_clients_own_send_limit_is_payload_too_large(stub: GrpcStub) -> None:
    stub.on("SubmitJob", Reply(receipt()))
    edge = client(stub.target, max_message_bytes=1 << 20)
    with pytest.raises(EdgeRejected) as info:
        edge.submit_job(
            model_id="m", version="1", sources={"s": {"i": b"x" * (1 << 20)}}, input_type="embedded", explain=False
        )
    assert info.value.code == "PAYLOAD_TOO_LARGE"
    assert not stub.seen("SubmitJob")  # refused before it left


def test_plain_resource_exhausted_is_transient(stub: GrpcStub) -> None:
    busy = Reply(code=grpc.StatusCode.RESOURCE_EXHAUSTED, details="too many jobs")
    stub.on("SubmitJob", busy, Reply(receipt("j9")))
    assert _submit(client(stub.target)).job_identifier == "j9"
    assert len(stub.seen("SubmitJob")) == 2


def test_invalid_argument_is_edge_rejected(stub: GrpcStub) -> None:
    stub.on("SubmitJob", Reply(code=grpc.StatusCode.INVALID_ARGUMENT, details="input i: bad data URI"))
    with pytest.raises(EdgeRejected) as info:
        _submit(client(stub.target))
    assert info.value.code == "EDGE_REJECTED"
    assert "gRPC INVALID_ARGUMENT" in info.value.message and "bad data URI" in info.value.message
    assert len(stub.seen("SubmitJob")) == 1


def test_not_found_on_a_job_is_job_lost_and_on_results_or_cancel_none(stub: GrpcStub) -> None:
    gone = Reply(code=grpc.StatusCode.NOT_FOUND, details="no such job")
    for method in ("GetJob", "GetResults", "CancelJob"):
        stub.on(method, gone)
    edge = client(stub.target)
    with pytest.raises(JobNotFound) as info:
        edge.get_job("j1")
    assert info.value.code == "JOB_LOST" and "j1" in info.value.message
    assert edge.get_results("j1") is None
    assert edge.cancel_job("j1") is None


def test_unavailable_is_retried_then_succeeds(stub: GrpcStub) -> None:
    down = Reply(code=grpc.StatusCode.UNAVAILABLE, details="failed to connect to all addresses")
    stub.on("GetJob", down, down, Reply(details()))
    calls: list[tuple[str, str | None]] = []
    job = client(stub.target, max_attempts=5, on_call=lambda n, _s, kind: calls.append((n, kind))).get_job("j1")
    assert job.status == "COMPLETE"
    assert calls == [("status", "connection"), ("status", "connection"), ("status", None)]
    # An UNAVAILABLE the edge itself answers (not a failed connection) is counted under its code.
    stub.on("GetJob", Reply(code=grpc.StatusCode.UNAVAILABLE, details="model server restarting"), Reply(details()))
    stub.on("SubmitJob", Reply(code=grpc.StatusCode.NOT_FOUND, details="no model"))
    edge = client(stub.target, max_attempts=2, on_call=lambda n, _s, kind: calls.append((n, kind)))
    edge.get_job("j1")
    with pytest.raises(ModelNotFound):
        _submit(edge)
    assert calls[3:] == [("status", "grpc_unavailable"), ("status", None), ("submit", "grpc_not_found")]


def test_internal_is_retried_until_max_attempts_then_edge_unavailable(stub: GrpcStub) -> None:
    stub.on("GetJob", Reply(code=grpc.StatusCode.INTERNAL, details="boom"))
    with pytest.raises(EdgeUnavailable) as info:
        client(stub.target, max_attempts=3).get_job("j1")
    assert "gRPC INTERNAL" in info.value.message and "after 3 attempts" in info.value.message
    assert len(stub.seen("GetJob")) == 3


def test_a_slow_edge_meets_the_deadline_of_request_timeout(stub: GrpcStub) -> None:
    stub.on("GetJob", Reply(details(), sleep_s=1.0))
    started = time.monotonic()
    with pytest.raises(EdgeUnavailable) as info:
        client(stub.target, request_timeout_s=0.2, max_attempts=1).get_job("j1")
    assert "did not answer status within 0.2 s" in info.value.message
    assert time.monotonic() - started < 0.9


def test_retries_stop_at_the_deadline(stub: GrpcStub) -> None:
    stub.on("GetJob", Reply(code=grpc.StatusCode.UNAVAILABLE, details="restarting"))
    with pytest.raises(EdgeUnavailable) as info:
        client(stub.target, max_attempts=100).get_job("j1", deadline=time.monotonic())
    assert "deadline reached" in info.value.message
    assert len(stub.seen("GetJob")) == 1


def test_a_chunk_that_may_have_arrived_is_not_sent_again_and_the_open_job_is_abandoned(stub: GrpcStub) -> None:
    stub.on("GetFeatures", Reply(jobs_pb2.JobFeatures(input_chunk_maximum_size="1M")))
    stub.on("SubmitJob", Reply(receipt("open-1", status=jobs_pb2.OPEN)))
    stub.on("AddInputToJob", Reply(_empty(), sleep_s=1.5))
    stub.on("CancelJob", Reply(details("open-1", "CANCELED")))
    edge = client(stub.target, request_timeout_s=0.5, max_attempts=5)
    with pytest.raises(EdgeUnavailable) as raised:
        edge.submit_chunked(model_id="m", version="1", sources={"s": {"i": b"x" * 10}}, explain=False)
    assert raised.value.maybe_sent
    assert len(stub.seen("AddInputToJob")) == 1
    assert [c.request.identifier for c in stub.seen("CancelJob")] == ["open-1"]
    assert not stub.seen("CloseJob")


def test_a_submission_whose_answer_was_lost_is_sent_again_and_flagged(stub: GrpcStub) -> None:
    stub.on("SubmitJob", Reply(receipt("j1"), sleep_s=1.0), Reply(receipt("j2")))
    job = _submit(client(stub.target, request_timeout_s=0.3, max_attempts=3))
    assert job.job_identifier == "j2" and job.maybe_duplicated
    assert len(stub.seen("SubmitJob")) == 2
    stub.on("SubmitJob", Reply(receipt("j3")))
    assert not _submit(client(stub.target)).maybe_duplicated


def test_a_refused_connection_is_retried_even_for_a_chunk_and_answers_says_why() -> None:
    edge = GrpcEdgeClient(target=f"127.0.0.1:{free_port()}", request_timeout_s=2, max_attempts=3)
    with pytest.raises(EdgeUnavailable) as raised:
        edge._do_append("j", "s", "i", memoryview(b"x"), deadline=None, meta={})
    assert not raised.value.maybe_sent  # nothing was sent: repeating it was safe
    assert "after 3 attempts" in raised.value.message
    answers, why = edge.answers()
    assert answers is False and "unreachable" in why


def test_one_channel_serves_every_thread(stub: GrpcStub) -> None:
    stub.on("GetJob", Reply(details()))
    edge = client(stub.target)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                assert edge.get_job("j1").status == "COMPLETE"
        except BaseException as exc:  # noqa: BLE001 -- reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    calls = stub.seen("GetJob")
    assert len(calls) == 40
    assert len({c.peer for c in calls}) == 1  # one connection for all eight threads


# -- the wrong transport for a port, the factory, the extra -------------------------------------------


def test_grpc_url_on_an_http_port_says_which_http_url_to_use(emulator: Any) -> None:
    target = emulator.url.removeprefix("http://")
    answers, why = GrpcEdgeClient(target=target, request_timeout_s=5, max_attempts=1).answers()
    assert answers is False
    assert f'edge.url = "http://{target}"' in why


def test_http_url_on_a_grpc_port_says_which_grpc_url_to_use(stub: GrpcStub) -> None:
    answers, why = HttpEdgeClient(base_url=f"http://{stub.target}", request_timeout_s=5, max_attempts=1).answers()
    assert answers is False
    assert f'edge.url = "grpc://{stub.target}"' in why


def test_factory_picks_the_transport_by_scheme(stub: GrpcStub) -> None:
    stub.on("GetFeatures", Reply(jobs_pb2.JobFeatures(input_chunk_maximum_size="1K")))
    edge = make_edge_client(EdgeConfig(url=stub.url, request_timeout=4, max_attempts=2))
    assert isinstance(edge, GrpcEdgeClient)
    assert edge.answers() == (True, "")
    edge.close()
    http = make_edge_client(EdgeConfig(url="http://127.0.0.1:1", chunk_encoding="bytes-array"))
    assert isinstance(http, HttpEdgeClient) and http.chunk_encoding == "bytes-array"


def test_grpc_url_without_the_grpc_extra_is_a_config_error_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "worker.edge.grpc")
    monkeypatch.setitem(sys.modules, "grpc", None)  # what an import finds when grpcio is not installed
    with pytest.raises(ConfigError) as info:
        make_edge_client(EdgeConfig(url="grpc://127.0.0.1:55000"))
    assert "pip install 'edge-worker[grpc]'" in str(info.value)
    assert "grpc://127.0.0.1:55000" in str(info.value)


def _empty() -> Any:
    from google.protobuf import empty_pb2

    return empty_pb2.Empty()


# -- against the emulator's gRPC face ---------------------------------------------------------------------

CHUNK = 1000
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7]


@pytest.fixture(scope="module")
def grpc_edge() -> Iterator[Any]:
    """The emulator with its gRPC face, chunks of at most 1000 bytes ("1K"), jobs that take no time."""
    from worker.emulator import EdgeEmulator, EmulatorConfig

    config = EmulatorConfig(port=0, grpc_port=0, latency_s=0.0, capacity=0, chunk_size="1K", chunk_size_bytes=CHUNK)
    emu = EdgeEmulator(config)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


def _record(emu: Any, job_id: str) -> dict[str, Any]:
    [record] = [job for job in emu.stats()["jobs"] if job["id"] == job_id]
    found: dict[str, Any] = record
    return found


def test_emulator_embedded_job_bytes_arrive_intact_and_results_come_back(grpc_edge: Any) -> None:
    import hashlib

    edge = client(grpc_edge.grpc_target)
    sources: dict[str, dict[str, bytes | str]] = {"cam-1": {"image": bytes(range(256)) * 10}, "cam-2": {"x": b"\xff"}}
    receipt = edge.submit_job(model_id="sha256", version="1.0.0", sources=sources, input_type="embedded", explain=False)
    assert receipt.job_identifier and receipt.status in {"SUBMITTED", "IN_PROGRESS", "COMPLETE"}
    assert (receipt.model["identifier"], receipt.total, sorted(receipt.job_inputs)) == ("sha256", 2, ["cam-1", "cam-2"])
    job = follow(edge, receipt.job_identifier)
    assert (job.status, job.total, job.completed, job.failed) == ("COMPLETE", 2, 2, 0)
    assert job.created_at and job.submitted_at
    results = edge.get_results(receipt.job_identifier)
    assert results is not None and results.finished and results.job_status() == "COMPLETE"
    for source, inputs in sources.items():
        for key, data in inputs.items():
            assert isinstance(data, bytes)
            digest = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            assert results.results[source]["inputs"][key] == digest
    assert grpc_edge.stats()["calls_by_face"].get("grpc", 0) >= 3


def test_emulator_text_job_and_failures(grpc_edge: Any) -> None:
    edge = client(grpc_edge.grpc_target)
    text = edge.submit_job(
        model_id="sha256", version="1.0.0", sources={"doc": {"t": "héllo ☃"}}, input_type="text", explain=True
    )
    follow(edge, text.job_identifier)
    record = _record(grpc_edge, text.job_identifier)
    assert (record["input_type"], record["explain"]) == ("text", True)
    failing = edge.submit_job(
        model_id="sha256",
        version="1.0.0",
        sources={"ok": {"i": b"fine"}, "bad": {"i": b"FAIL!"}},
        input_type="embedded",
        explain=False,
    )
    assert follow(edge, failing.job_identifier).failed == 1
    results = edge.get_results(failing.job_identifier)
    assert results is not None
    assert set(results.results) == {"ok"} and set(results.failures) == {"bad"}
    # The emulator packs a Struct where a real edge packs common.v1.Error: either way one flat object, the
    # same as the HTTP face shows for that job.
    http = HttpEdgeClient(base_url=grpc_edge.url, request_timeout_s=10, max_attempts=1)
    assert results.failures == http.get_results(failing.job_identifier).failures  # type: ignore[union-attr]
    assert results.failures["bad"]["@type"].endswith("google.protobuf.Struct")
    assert "FAIL" in results.failures["bad"]["error"]


@pytest.mark.parametrize("size", SIZES)
def test_emulator_chunked_upload_is_byte_identical_around_the_chunk_size(grpc_edge: Any, size: int) -> None:
    import hashlib
    import math
    import os

    edge = client(grpc_edge.grpc_target)
    assert edge.features().chunk_bytes == CHUNK  # "1K": the smaller reading
    data = os.urandom(size)
    before = grpc_edge.stats()["calls"].get("chunk", 0)
    job = edge.submit_chunked(model_id="sha256", version="1.0.0", sources={"cam": {"image": data}}, explain=False)
    assert grpc_edge.stats()["calls"]["chunk"] - before == max(1, math.ceil(size / CHUNK))
    record = _record(grpc_edge, job.job_identifier)
    assert record["input_type"] == "open"
    assert record["inputs"]["cam"]["image"] == {"sha256": hashlib.sha256(data).hexdigest(), "size": size}
    assert follow(edge, job.job_identifier).status == "COMPLETE"


def test_emulator_unknown_model_unknown_job_cancel_and_list(grpc_edge: Any) -> None:
    edge = client(grpc_edge.grpc_target)
    with pytest.raises(ModelNotFound) as info:
        edge.submit_job(
            model_id="nope", version="0.0.1", sources={"a": {"i": b"1"}}, input_type="embedded", explain=False
        )
    assert "nope:0.0.1" in info.value.message
    with pytest.raises(JobNotFound):
        edge.get_job("no-such-job")
    assert edge.get_results("no-such-job") is None
    assert edge.cancel_job("no-such-job") is None
    slow = edge.submit_job(
        model_id="sleep", version="1.0.0", sources={"job": {"seconds": "30"}}, input_type="text", explain=False
    )
    assert slow.job_identifier in {summary.job_identifier for summary in edge.list_jobs()}
    canceled = edge.cancel_job(slow.job_identifier)
    assert canceled is not None and canceled.status == "CANCELED"
    assert edge.get_job(slow.job_identifier).status == "CANCELED"


def test_emulator_refuses_an_embedded_job_over_its_receive_limit_as_payload_too_large(grpc_edge: Any) -> None:
    import os

    edge = client(grpc_edge.grpc_target)
    before = grpc_edge.stats()["jobs_submitted"]
    with pytest.raises(EdgeRejected) as info:
        edge.submit_job(
            model_id="sha256",
            version="1.0.0",
            sources={"big": {"i": os.urandom(5 << 20)}},
            input_type="embedded",
            explain=False,
        )
    assert info.value.code == "PAYLOAD_TOO_LARGE"
    assert "larger than max" in info.value.message
    assert grpc_edge.stats()["jobs_submitted"] == before


def test_worker_over_grpc_runs_embedded_chunked_and_unknown_model_requests(
    grpc_edge: Any, worker_factory: Any, producer: Producer, collector: ReplyCollector
) -> None:
    import hashlib
    import os

    http_calls = grpc_edge.stats()["calls_by_face"].get("http", 0)
    worker = worker_factory(f"grpc://{grpc_edge.grpc_target}", edge__embed_limit=2 * CHUNK).start()
    small, large = os.urandom(CHUNK), os.urandom(5 * CHUNK + 3)
    model = {"identifier": "sha256", "version": "1.0.0"}
    ids = [
        producer.publish({"model": model, "sources": {"a": {"x": small}}}),
        producer.publish({"model": model, "sources": {"b": {"y": large}}}),
        producer.publish({"model": {"identifier": "nope", "version": "9"}, "sources": {"a": {"x": b"1"}}}),
    ]
    finals = collector.wait_finals(3, timeout_s=60)
    first, second, unknown = (finals[mid][0] for mid in ids)
    assert first["status"] == "COMPLETE", first
    assert first["results"]["a"]["inputs"]["x"]["sha256"] == hashlib.sha256(small).hexdigest()
    assert second["status"] == "COMPLETE", second
    assert second["results"]["b"]["inputs"]["y"] == {"sha256": hashlib.sha256(large).hexdigest(), "size": len(large)}
    assert _record(grpc_edge, second["job_identifier"])["input_type"] == "open"  # chunked, over AddInputToJob
    assert (unknown["status"], unknown["error"]["code"]) == ("ERROR", "MODEL_NOT_FOUND")
    assert grpc_edge.stats()["calls_by_face"].get("http", 0) == http_calls  # nothing went to the HTTP face
    assert worker.terminate() == 0
