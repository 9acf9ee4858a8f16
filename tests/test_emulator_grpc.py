"""The emulator's gRPC face, called with the generated stubs over a real socket: the services and
messages of the edge SDK (jobs.v1.JobService, results.v1.ResultsService), over the same jobs as the
HTTP face."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import requests
from google.protobuf import empty_pb2, json_format, struct_pb2

from tests.conftest import wait_until
from worker._proto.common.v1 import common_pb2
from worker._proto.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from worker._proto.results.v1 import results_pb2_grpc
from worker.emulator import EdgeEmulator, EmulatorConfig

MODEL = common_pb2.ModelIdentifier(identifier="ed542963de", version="1.0.1")
TIMEOUT_S = 5.0


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def data_uri(data: bytes) -> str:
    return f"data:application/octet-stream;base64,{base64.b64encode(data).decode()}"


class Edge:
    """The emulator with a channel to its gRPC face and the generated stubs."""

    def __init__(self, emulator: EdgeEmulator) -> None:
        assert emulator.grpc_target is not None
        self.emulator = emulator
        self.channel = grpc.insecure_channel(emulator.grpc_target)
        self.jobs: Any = jobs_pb2_grpc.JobServiceStub(self.channel)
        self.results: Any = results_pb2_grpc.ResultsServiceStub(self.channel)

    def submit(self, input_type: str | None, sources: dict[str, dict[str, str]], **fields: Any) -> Any:
        submission = jobs_pb2.JobSubmission(model=fields.pop("model", MODEL), **fields)
        if input_type is not None:
            submission.input.type = input_type
            for source, values in sources.items():
                submission.input.sources[source].update(values)
        return self.jobs.SubmitJob(submission, timeout=TIMEOUT_S)

    def status(self, job_id: str) -> str:
        status: str = self.jobs.GetJob(jobs_pb2.JobIdentifier(identifier=job_id), timeout=TIMEOUT_S).status
        return status

    def wait_done(self, job_id: str) -> str:
        status: str = wait_until(
            lambda: (s := self.status(job_id)) in ("COMPLETE", "FAILED", "CANCELED") and s, 5.0, what="a final status"
        )
        return status

    def outputs(self, job_id: str) -> dict[str, Any]:
        answer = self.results.GetResults(jobs_pb2.JobIdentifier(identifier=job_id), timeout=TIMEOUT_S)
        return {source: json_format.MessageToDict(result.results) for source, result in answer.results.items()}

    def code_of(self, call: Any, request: Any) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as raised:
            call(request, timeout=TIMEOUT_S)
        code: grpc.StatusCode = raised.value.code()
        return code


@pytest.fixture
def make_edge() -> Iterator[Any]:
    started: list[Edge] = []

    def factory(**overrides: Any) -> Edge:
        emulator = EdgeEmulator(EmulatorConfig(**{"port": 0, "grpc_port": 0, "latency_s": 0.02, **overrides}))
        emulator.start()
        edge = Edge(emulator)
        started.append(edge)
        return edge

    yield factory
    for edge in started:
        edge.channel.close()
        edge.emulator.stop()


@pytest.fixture
def edge(make_edge: Any) -> Edge:
    edge: Edge = make_edge()
    return edge


def test_addresses_and_features(make_edge: Any) -> None:
    edge = make_edge(chunk_size="512Ki")
    assert edge.emulator.grpc_target == f"127.0.0.1:{edge.emulator.grpc_port}"
    assert edge.emulator.grpc_port != edge.emulator.port
    features = edge.jobs.GetFeatures(empty_pb2.Empty(), timeout=TIMEOUT_S)
    assert features.input_chunk_maximum_size == "512Ki"
    assert features.maximum_input_chunks == 1000 and features.maximum_inputs_per_job == 1000
    assert EdgeEmulator(EmulatorConfig(port=0)).grpc_target is None  # no gRPC face unless asked


def test_text_job_receipt_enum_details_string_and_struct_results(edge: Edge) -> None:
    text = "héllo ✓"
    receipt = edge.submit("text", {"doc": {"input.txt": text}})
    assert receipt.status == jobs_pb2.SUBMITTED  # the receipt's status is the JobStatus enum
    assert receipt.total_inputs == 1 and list(receipt.job_inputs.identifier) == ["doc"]
    assert receipt.input_byte_amount == len(text.encode())
    assert receipt.model.identifier == "ed542963de" and receipt.submitted_at.seconds > 0

    assert edge.wait_done(receipt.job_identifier) == "COMPLETE"  # JobDetails.status is a plain string
    details = edge.jobs.GetJob(jobs_pb2.JobIdentifier(identifier=receipt.job_identifier), timeout=TIMEOUT_S)
    assert details.completed == 1 and [entry.identifier for entry in details.job_inputs] == ["doc"]
    answer = edge.results.GetResults(jobs_pb2.JobIdentifier(identifier=receipt.job_identifier), timeout=TIMEOUT_S)
    assert answer.finished and answer.completed == 1 and answer.results["doc"].status == "SUCCESSFUL"
    assert json_format.MessageToDict(answer.results["doc"])["results.json"]["inputs"] == {
        "input.txt": {"sha256": sha256(text.encode()), "size": len(text.encode())}
    }


def test_embedded_bytes_arrive_intact(edge: Edge) -> None:
    image = os.urandom(5000) + b"\x00\r\n"
    job = edge.submit("embedded", {"cat": {"image": data_uri(image)}}, explain=True)
    assert edge.wait_done(job.job_identifier) == "COMPLETE"
    output = edge.outputs(job.job_identifier)["cat"]
    assert output["inputs"] == {"image": {"sha256": sha256(image), "size": len(image)}}
    assert output["explain"] is True


def test_errors_are_status_codes(edge: Edge) -> None:
    unknown_model = jobs_pb2.JobSubmission(model=common_pb2.ModelIdentifier(identifier="ed542963de", version="9"))
    assert edge.code_of(edge.jobs.SubmitJob, unknown_model) == grpc.StatusCode.NOT_FOUND
    nobody = jobs_pb2.JobIdentifier(identifier="no-such-job")
    for call in (edge.jobs.GetJob, edge.jobs.CancelJob, edge.jobs.CloseJob, edge.results.GetResults):
        assert edge.code_of(call, nobody) == grpc.StatusCode.NOT_FOUND
    not_a_uri = jobs_pb2.JobSubmission(model=MODEL, input=jobs_pb2.JobInput(type="embedded"))
    not_a_uri.input.sources["a"].update({"k": "AAEC"})
    assert edge.code_of(edge.jobs.SubmitJob, not_a_uri) == grpc.StatusCode.INVALID_ARGUMENT
    assert edge.code_of(edge.jobs.SubmitJob, jobs_pb2.JobSubmission()) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as raised:
        edge.jobs.SubmitJob(unknown_model, timeout=TIMEOUT_S)
    assert raised.value.details() == "model ed542963de:9 not found"


def test_open_job_takes_raw_byte_chunks_then_closes(make_edge: Any) -> None:
    edge = make_edge(chunk_size="1K", chunk_size_bytes=1000)
    opened = edge.submit(None, {})
    assert opened.status == jobs_pb2.OPEN
    job_id = opened.job_identifier
    payload = os.urandom(2500) + b"\x00"
    for start in range(0, len(payload), 1000):
        chunk = jobs_pb2.AppendableJobInput(
            job_identifier=job_id, datasource_name="src", input_name="in.bin", data=payload[start : start + 1000]
        )
        assert edge.jobs.AddInputToJob(chunk, timeout=TIMEOUT_S) == empty_pb2.Empty()
    too_big = jobs_pb2.AppendableJobInput(
        job_identifier=job_id, datasource_name="src", input_name="x", data=b"x" * 1001
    )
    assert edge.code_of(edge.jobs.AddInputToJob, too_big) == grpc.StatusCode.INVALID_ARGUMENT

    closed = edge.jobs.CloseJob(jobs_pb2.JobIdentifier(identifier=job_id), timeout=TIMEOUT_S)
    assert closed.status == jobs_pb2.SUBMITTED and closed.total_inputs == 1
    assert edge.wait_done(job_id) == "COMPLETE"
    assert edge.outputs(job_id)["src"]["inputs"] == {"in.bin": {"sha256": sha256(payload), "size": len(payload)}}
    again = jobs_pb2.JobIdentifier(identifier=job_id)
    assert edge.code_of(edge.jobs.CloseJob, again) == grpc.StatusCode.FAILED_PRECONDITION
    stats = edge.emulator.stats()
    assert stats["chunks_appended"] == 3 and stats["chunks_refused"] == 1 and stats["jobs_closed"] == 1


def test_cancel_and_failures_as_any(edge: Edge) -> None:
    sleeper = edge.submit(
        "text", {"s": {"seconds": "30"}}, model=common_pb2.ModelIdentifier(identifier="sleep", version="1.0.0")
    )
    canceled = edge.jobs.CancelJob(jobs_pb2.JobIdentifier(identifier=sleeper.job_identifier), timeout=TIMEOUT_S)
    assert canceled.status == "CANCELED"

    job = edge.submit("text", {"ok": {"input.txt": "fine"}, "bad": {"input.txt": "FAIL here"}})
    assert edge.wait_done(job.job_identifier) == "COMPLETE"
    answer = edge.results.GetResults(jobs_pb2.JobIdentifier(identifier=job.job_identifier), timeout=TIMEOUT_S)
    assert list(answer.results) == ["ok"] and answer.failed == 1
    failure = answer.failures["bad"]
    assert failure.type_url == "type.googleapis.com/google.protobuf.Struct"
    content = struct_pb2.Struct()
    assert failure.Unpack(content) and content["source"] == "bad" and content["error"]


def test_stock_receive_limit_of_4_mib(make_edge: Any) -> None:
    edge = make_edge(latency_s=0.0)
    fits = edge.submit("embedded", {"a": {"k": data_uri(b"\x01" * 3_000_000)}})  # about 4,000,100 bytes
    assert fits.status == jobs_pb2.SUBMITTED
    too_big = jobs_pb2.JobSubmission(model=MODEL, input=jobs_pb2.JobInput(type="embedded"))
    too_big.input.sources["a"].update({"k": data_uri(b"\x01" * 3_200_000)})
    size = too_big.ByteSize()
    assert size > 4 * 1024 * 1024
    with pytest.raises(grpc.RpcError) as raised:
        edge.jobs.SubmitJob(too_big, timeout=TIMEOUT_S)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert raised.value.details() == f"grpc: received message larger than max ({size} vs. 4194304)"
    stats = edge.emulator.stats()
    assert stats["jobs_submitted"] == 1 and stats["rejected_too_large"] == 1 and stats["calls"]["submit"] == 1
    # A refused message does not spoil the channel.
    assert edge.jobs.GetFeatures(empty_pb2.Empty(), timeout=TIMEOUT_S).maximum_input_chunks == 1000


def test_both_faces_serve_the_same_jobs(edge: Edge) -> None:
    over_grpc = edge.submit("text", {"g": {"input.txt": "via grpc"}}).job_identifier
    http = requests.Session()
    document = {
        "model": {"identifier": "ed542963de", "version": "1.0.1"},
        "input": {"type": "text", "sources": {"h": {"input.txt": "via http"}}},
    }
    over_http = http.post(f"{edge.emulator.url}/api/jobs", json=document, timeout=TIMEOUT_S).json()["jobIdentifier"]

    assert edge.wait_done(over_http) == "COMPLETE"
    seen_over_http = http.get(f"{edge.emulator.url}/api/jobs/{over_grpc}", timeout=TIMEOUT_S).json()
    assert seen_over_http["jobInputs"] == [{"identifier": "g"}]
    listing = edge.jobs.GetJobs(jobs_pb2.JobFilter(), timeout=TIMEOUT_S)
    assert [job.job_identifier for job in listing.jobs] == [over_grpc, over_http] and listing.total_count == 2
    only = edge.jobs.GetJobs(jobs_pb2.JobFilter(model="sha256"), timeout=TIMEOUT_S)
    assert list(only.jobs) == []
    http_results = http.get(f"{edge.emulator.url}/api/results/{over_grpc}", timeout=TIMEOUT_S).json()
    assert http_results["results"]["g"]["results.json"] == edge.outputs(over_grpc)["g"]
    stats = edge.emulator.stats()
    assert stats["calls_by_face"]["http"] == 3 and stats["calls_by_face"]["grpc"] >= 5
    assert stats["calls"]["list"] == 2


def test_injected_faults_and_forgotten_jobs(edge: Edge) -> None:
    job_id = edge.submit("text", {"a": {"input.txt": "x"}}).job_identifier
    edge.emulator.set_faults(fail_rate=1.0)
    assert edge.code_of(edge.jobs.GetFeatures, empty_pb2.Empty()) == grpc.StatusCode.UNAVAILABLE
    edge.emulator.set_faults(fail_rate=0.0)
    assert edge.status(job_id) in ("SUBMITTED", "IN_PROGRESS", "COMPLETE")
    edge.emulator.forget_all_jobs()
    assert edge.code_of(edge.jobs.GetJob, jobs_pb2.JobIdentifier(identifier=job_id)) == grpc.StatusCode.NOT_FOUND
    assert edge.emulator.stats()["failed_calls_injected"] == 1


def test_stop_and_start_serve_the_same_grpc_port_again(edge: Edge) -> None:
    job_id = edge.submit("text", {"a": {"input.txt": "survives"}}).job_identifier
    port = edge.emulator.grpc_port
    edge.emulator.stop()
    assert edge.code_of(edge.jobs.GetFeatures, empty_pb2.Empty()) == grpc.StatusCode.UNAVAILABLE
    edge.emulator.start()
    assert edge.emulator.grpc_port == port
    # The channel reconnects on its own once the port answers again (after its reconnect backoff).
    edge.jobs.GetFeatures(empty_pb2.Empty(), timeout=TIMEOUT_S, wait_for_ready=True)
    assert edge.wait_done(job_id) == "COMPLETE"


def test_cli_serves_both_faces() -> None:
    command = [sys.executable, "-m", "worker", "emulator", "--port", "0", "--grpc-port", "0", "--latency", "0.01"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = json.loads(process.stdout.readline())
        assert line["event"] == "emulator_listening" and line["grpc_target"] == f"127.0.0.1:{line['grpc_port']}"
        with grpc.insecure_channel(line["grpc_target"]) as channel:
            stub: Any = jobs_pb2_grpc.JobServiceStub(channel)
            assert stub.GetFeatures(empty_pb2.Empty(), timeout=TIMEOUT_S).input_chunk_maximum_size == "1M"
        assert requests.get(f"{line['url']}/api/jobs/features", timeout=TIMEOUT_S).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=TIMEOUT_S) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
