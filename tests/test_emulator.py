"""The edge emulator behaves like the Modzy Edge HTTP gateway described in edge-http-api.md."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
import requests
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from worker.emulator import EdgeEmulator, EmulatorConfig

MODEL = {"identifier": "ed542963de", "version": "1.0.1"}
TERMINAL = ("COMPLETE", "FAILED", "CANCELED")
TIMEOUT_S = 5.0


def wait_until(predicate: Callable[[], bool], timeout_s: float = TIMEOUT_S) -> None:
    """Poll `predicate` until it holds; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.005)  # sleep-ok: polling interval


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def data_uri(data: bytes, mime: str = "application/octet-stream") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def text_job(sources: dict[str, dict[str, str]], **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "explain": False, "input": {"type": "text", "sources": sources}, **extra}


def embedded_job_body(value: str) -> bytes:
    return json.dumps({"model": MODEL, "input": {"type": "embedded", "sources": {"a": {"k": value}}}}).encode()


class Edge:
    """A tiny client for the emulated edge, with one keep-alive session."""

    def __init__(self, emulator: EdgeEmulator) -> None:
        self.emulator = emulator
        self.url = emulator.url
        self.http = requests.Session()

    def submit(self, document: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post(f"{self.url}/api/jobs", json=document, timeout=TIMEOUT_S)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    def status(self, job_id: str) -> str:
        response = self.http.get(f"{self.url}/api/jobs/{job_id}", timeout=TIMEOUT_S)
        assert response.status_code == 200, response.text
        status: str = response.json()["status"]
        return status

    def results(self, job_id: str) -> dict[str, Any]:
        response = self.http.get(f"{self.url}/api/results/{job_id}", timeout=TIMEOUT_S)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    def wait_for(self, job_id: str, *statuses: str) -> str:
        seen: list[str] = []

        def reached() -> bool:
            seen.append(self.status(job_id))
            return seen[-1] in statuses

        wait_until(reached)
        return seen[-1]

    def append(self, job_id: str, source: str, name: str, chunk: bytes, encoding: str) -> requests.Response:
        url = f"{self.url}/api/jobs/{job_id}/{quote(source, safe='')}/{quote(name, safe='')}"
        if encoding == "multipart":
            return self.http.post(url, files={"input": ("chunk", chunk)}, timeout=TIMEOUT_S)
        return self.http.post(url, json=base64.b64encode(chunk).decode(), timeout=TIMEOUT_S)


@pytest.fixture
def make_edge() -> Iterator[Callable[..., Edge]]:
    """Start emulators on free ports with fast defaults; always stop them."""
    started: list[EdgeEmulator] = []

    def factory(**overrides: Any) -> Edge:
        settings: dict[str, Any] = {"port": 0, "latency_s": 0.02, **overrides}
        emulator = EdgeEmulator(EmulatorConfig(**settings))
        started.append(emulator)
        emulator.start()
        return Edge(emulator)

    yield factory
    for emulator in started:
        emulator.stop()


@pytest.fixture
def edge(make_edge: Callable[..., Edge]) -> Edge:
    return make_edge()


def assert_grpc_error(response: requests.Response, http_status: int, code: int) -> dict[str, Any]:
    assert response.status_code == http_status, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert body["details"] == []
    return body


# ----- submit, status, results ---------------------------------------------------------------------


def test_features_report_chunk_limits(make_edge: Callable[..., Edge]) -> None:
    edge = make_edge(chunk_size="512Ki")
    answer = edge.http.get(f"{edge.url}/api/jobs/features", timeout=TIMEOUT_S).json()
    assert answer == {
        "inputChunkMaximumSize": "512Ki",
        "maximumInputChunks": 1000,
        "maximumInputsPerJob": 1000,
    }


def test_text_job_completes_with_digests_of_its_utf8_bytes(edge: Edge) -> None:
    text = "héllo, wörld ✓"
    receipt = edge.submit(text_job({"doc-1": {"input.txt": text}}))

    assert receipt["status"] == "SUBMITTED"
    assert receipt["model"]["identifier"] == "ed542963de" and receipt["model"]["version"] == "1.0.1"
    assert receipt["totalInputs"] == 1
    assert receipt["inputByteAmount"] == len(text.encode())
    assert receipt["jobInputs"] == {"identifier": ["doc-1"]}
    assert receipt["accessKey"] == "" and receipt["explain"] is False
    assert receipt["submittedAt"].endswith("Z")

    job_id = receipt["jobIdentifier"]
    assert edge.wait_for(job_id, *TERMINAL) == "COMPLETE"
    details = edge.http.get(f"{edge.url}/api/jobs/{job_id}", timeout=TIMEOUT_S).json()
    assert details["total"] == 1 and details["completed"] == 1 and details["pending"] == 0
    assert details["jobInputs"] == [{"identifier": "doc-1"}]
    assert isinstance(details["elapsedTime"], int)

    results = edge.results(job_id)
    assert results["finished"] is True and results["completed"] == 1 and results["failed"] == 0
    assert results["failures"] == {}
    result = results["results"]["doc-1"]
    assert result["status"] == "SUCCESSFUL" and result["engine"] == "emulator"
    assert result["results.json"] == {
        "model": "ed542963de",
        "version": "1.0.1",
        "explain": False,
        "inputs": {"input.txt": {"sha256": sha256(text.encode()), "size": len(text.encode())}},
    }


def test_embedded_job_delivers_bytes_intact_and_explains(edge: Edge) -> None:
    image = os.urandom(3000) + b"\r\n\x00\xff"
    config = b'{"threshold": 0.5}'
    receipt = edge.submit(
        {
            "model": {"identifier": "sha256", "version": "1.0.0"},
            "explain": True,
            "input": {
                "type": "embedded",
                "sources": {"cat": {"image": data_uri(image, "image/png"), "config.json": data_uri(config)}},
            },
        }
    )
    job_id = receipt["jobIdentifier"]
    assert edge.wait_for(job_id, *TERMINAL) == "COMPLETE"

    output = edge.results(job_id)["results"]["cat"]["results.json"]
    assert output["explain"] is True
    assert output["explanation"] == {"method": "emulated"}
    assert output["inputs"] == {
        "image": {"sha256": sha256(image), "size": len(image)},
        "config.json": {"sha256": sha256(config), "size": len(config)},
    }


def test_results_of_a_running_job_are_not_finished(edge: Edge) -> None:
    job = edge.submit(
        {
            "model": {"identifier": "sleep", "version": "1.0.0"},
            "input": {"type": "text", "sources": {"s": {"seconds": "30"}}},
        }
    )
    results = edge.results(job["jobIdentifier"])
    assert results["finished"] is False
    assert results["results"] == {} and results["failures"] == {}
    assert results["total"] == 1


def test_request_keys_may_be_camel_or_snake_case(edge: Edge) -> None:
    faults = f"{edge.url}/_emulator/faults"
    assert edge.http.post(faults, json={"latencyS": 0.5}, timeout=TIMEOUT_S).json()["latency_s"] == 0.5
    assert edge.http.post(faults, json={"latency_s": 0.01}, timeout=TIMEOUT_S).json()["latency_s"] == 0.01
    # JobSubmission's own keys are single words, so both spellings of them are the same string.
    receipt = edge.submit(text_job({"a": {"input.txt": "x"}}, explain=True, unknown_field=1, unknownField=2))
    assert receipt["explain"] is True


def test_unknown_model_is_not_found_in_grpc_gateway_shape(edge: Edge) -> None:
    document = {"model": {"identifier": "ed542963de", "version": "9.9"}, "input": None}
    response = edge.http.post(f"{edge.url}/api/jobs", json=document, timeout=TIMEOUT_S)
    body = assert_grpc_error(response, 404, 5)
    assert body["message"] == "model ed542963de:9.9 not found"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[1, 2]",
        json.dumps({"model": "ed542963de"}).encode(),
        json.dumps({"model": {"identifier": "ed542963de"}}).encode(),
        json.dumps(text_job({"a": {"input.txt": "x"}}, explain="yes")).encode(),
        json.dumps(text_job({})).encode(),
        json.dumps(text_job({"a": "one level, not two"})).encode(),  # type: ignore[dict-item]
        json.dumps(text_job({"a": {"input.txt": 7}})).encode(),  # type: ignore[dict-item]
        json.dumps({"model": MODEL, "input": {"type": "aws-s3", "sources": {"a": {"k": "v"}}}}).encode(),
        embedded_job_body("AAEC"),
        embedded_job_body("data:;base64,AAE"),
        embedded_job_body("data:;base64,A-_="),
    ],
    ids=[
        "empty",
        "not-json",
        "not-object",
        "model-not-object",
        "no-version",
        "explain-not-bool",
        "no-sources",
        "one-level-sources",
        "value-not-string",
        "unsupported-type",
        "not-a-data-uri",
        "unpadded-base64",
        "urlsafe-base64",
    ],
)
def test_malformed_submissions_are_invalid_argument(edge: Edge, body: bytes) -> None:
    response = edge.http.post(
        f"{edge.url}/api/jobs", data=body, headers={"Content-Type": "application/json"}, timeout=TIMEOUT_S
    )
    assert_grpc_error(response, 400, 3)


def test_unknown_path_is_not_found_and_wrong_method_unimplemented(edge: Edge) -> None:
    assert_grpc_error(edge.http.get(f"{edge.url}/api/nothing", timeout=TIMEOUT_S), 404, 5)
    assert_grpc_error(edge.http.get(f"{edge.url}/elsewhere", timeout=TIMEOUT_S), 404, 5)
    assert_grpc_error(edge.http.get(f"{edge.url}/api/jobs/no-such-job", timeout=TIMEOUT_S), 404, 5)
    assert_grpc_error(edge.http.get(f"{edge.url}/api/results/no-such-job", timeout=TIMEOUT_S), 404, 5)
    assert_grpc_error(edge.http.delete(f"{edge.url}/api/jobs/no-such-job", timeout=TIMEOUT_S), 404, 5)
    assert_grpc_error(edge.http.patch(f"{edge.url}/api/jobs", timeout=TIMEOUT_S), 501, 12)  # GET lists jobs
    assert_grpc_error(edge.http.put(f"{edge.url}/api/jobs/features", timeout=TIMEOUT_S), 501, 12)


# ----- scheduling ----------------------------------------------------------------------------------


def test_capacity_two_runs_two_jobs_at_once_and_queues_the_rest(make_edge: Callable[..., Edge]) -> None:
    edge = make_edge(capacity=2, latency_s=0.8)
    job_ids = [edge.submit(text_job({"a": {"input.txt": str(n)}}))["jobIdentifier"] for n in range(4)]

    assert [edge.status(job_id) for job_id in job_ids[2:]] == ["SUBMITTED", "SUBMITTED"]
    assert [edge.status(job_id) for job_id in job_ids[:2]] == ["IN_PROGRESS", "IN_PROGRESS"]
    assert edge.emulator.stats()["running_now"] == 2

    for job_id in job_ids:
        assert edge.wait_for(job_id, *TERMINAL) == "COMPLETE"
    stats = edge.emulator.stats()
    assert stats["peak_running"] == 2
    assert stats["running_now"] == 0
    assert stats["jobs_submitted"] == 4
    later = edge.results(job_ids[3])["results"]["a"]
    assert later["queueTime"] >= 700.0  # waited for a slot for about one job's latency


def test_cancel_gives_the_slot_to_the_waiting_job(make_edge: Callable[..., Edge]) -> None:
    edge = make_edge(capacity=1, latency_s=0.05)
    sleeper = {"model": {"identifier": "sleep", "version": "1.0.0"}, "input": {"type": "text"}}
    long_job = edge.submit({**sleeper, "input": {"type": "text", "sources": {"s": {"seconds": "60"}}}})
    waiting = edge.submit(text_job({"a": {"input.txt": "after"}}))
    long_id, waiting_id = long_job["jobIdentifier"], waiting["jobIdentifier"]
    assert edge.status(long_id) == "IN_PROGRESS"
    assert edge.status(waiting_id) == "SUBMITTED"

    response = edge.http.delete(f"{edge.url}/api/jobs/{long_id}", timeout=TIMEOUT_S)
    assert response.status_code == 200 and response.json()["status"] == "CANCELED"
    assert edge.wait_for(waiting_id, *TERMINAL) == "COMPLETE"

    # Cancelling a terminal job answers it unchanged.
    again = edge.http.delete(f"{edge.url}/api/jobs/{waiting_id}", timeout=TIMEOUT_S).json()
    assert again["status"] == "COMPLETE"
    assert edge.results(long_id)["finished"] is True
    stats = edge.emulator.stats()
    assert stats["jobs_canceled"] == 1
    assert stats["peak_running"] == 1
    assert stats["calls"]["cancel"] == 2


def test_cancel_of_a_waiting_job_moves_later_jobs_up(make_edge: Callable[..., Edge]) -> None:
    edge = make_edge(capacity=1, latency_s=0.3)
    first, second, third = (edge.submit(text_job({"a": {"input.txt": str(n)}}))["jobIdentifier"] for n in range(3))
    edge.http.delete(f"{edge.url}/api/jobs/{second}", timeout=TIMEOUT_S)
    assert edge.status(second) == "CANCELED"
    assert edge.wait_for(third, *TERMINAL) == "COMPLETE"
    # The third job started the moment the first ended, not a whole job later.
    first_result = edge.results(first)["results"]["a"]
    third_result = edge.results(third)["results"]["a"]
    assert third_result["startTime"] == first_result["endTime"]
    assert edge.emulator.stats()["peak_running"] == 1


def test_fail_inputs_land_in_failures(edge: Edge) -> None:
    all_fail = edge.submit(text_job({"x": {"input.txt": "FAIL one"}, "y": {"input.txt": "FAIL two"}}))
    some_fail = edge.submit(text_job({"ok": {"input.txt": "fine"}, "bad": {"input.txt": "FAILURE"}}))

    assert edge.wait_for(all_fail["jobIdentifier"], *TERMINAL) == "FAILED"
    assert edge.wait_for(some_fail["jobIdentifier"], *TERMINAL) == "COMPLETE"

    results = edge.results(some_fail["jobIdentifier"])
    assert results["completed"] == 1 and results["failed"] == 1
    assert list(results["results"]) == ["ok"]
    failure = results["failures"]["bad"]
    assert failure["@type"] == "type.googleapis.com/google.protobuf.Struct"
    assert failure["source"] == "bad" and failure["error"]
    failed = edge.results(all_fail["jobIdentifier"])
    assert failed["failed"] == 2 and failed["results"] == {}


# ----- open jobs and chunks ------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["json", "multipart"])
def test_open_job_assembles_chunks_byte_for_byte(make_edge: Callable[..., Edge], encoding: str) -> None:
    limit = 1000
    edge = make_edge(chunk_size="1K", chunk_size_bytes=limit)
    job = edge.submit({"model": MODEL, "explain": False})
    assert job["status"] == "OPEN"
    job_id = job["jobIdentifier"]
    assert edge.status(job_id) == "OPEN"

    payload = os.urandom(2 * limit + 123) + b"\r\n--boundary\r\n"
    chunks = [payload[i : i + limit] for i in range(0, len(payload), limit)]
    assert len(chunks[0]) == limit  # a chunk exactly at the limit is accepted
    source, name = "my source/1", "input file.bin"
    for chunk in chunks:
        response = edge.append(job_id, source, name, chunk, encoding)
        assert response.status_code == 200, response.text
        assert response.json() == {}
    assert edge.append(job_id, "empty", "input.txt", b"", encoding).status_code == 200
    assert_grpc_error(edge.append(job_id, source, name, b"x" * (limit + 1), encoding), 400, 3)

    closed = edge.http.post(f"{edge.url}/api/jobs/{job_id}/close", timeout=TIMEOUT_S)
    assert closed.status_code == 200 and closed.json()["status"] == "SUBMITTED"
    assert closed.json()["totalInputs"] == 2
    assert edge.wait_for(job_id, *TERMINAL) == "COMPLETE"

    results = edge.results(job_id)["results"]
    assert results[source]["results.json"]["inputs"] == {name: {"sha256": sha256(payload), "size": len(payload)}}
    assert results["empty"]["results.json"]["inputs"] == {"input.txt": {"sha256": sha256(b""), "size": 0}}
    stats = edge.emulator.stats()
    assert stats["jobs_closed"] == 1 and stats["calls"]["chunk"] == len(chunks) + 2
    assert stats["jobs"][0]["input_type"] == "open"


def test_chunks_and_close_need_an_open_job(edge: Edge) -> None:
    job_id = edge.submit({"model": MODEL})["jobIdentifier"]
    assert_grpc_error(edge.http.post(f"{edge.url}/api/jobs/{job_id}/close", timeout=TIMEOUT_S), 400, 9)
    assert edge.append(job_id, "a", "input.txt", b"data", "json").status_code == 200
    assert edge.http.post(f"{edge.url}/api/jobs/{job_id}/close", timeout=TIMEOUT_S).status_code == 200

    assert_grpc_error(edge.append(job_id, "a", "input.txt", b"more", "json"), 400, 9)
    assert_grpc_error(edge.http.post(f"{edge.url}/api/jobs/{job_id}/close", timeout=TIMEOUT_S), 400, 9)
    assert_grpc_error(edge.append("no-such-job", "a", "input.txt", b"x", "json"), 404, 5)
    bad_base64 = edge.http.post(f"{edge.url}/api/jobs/{job_id}/a/b", json="AAE", timeout=TIMEOUT_S)
    assert_grpc_error(bad_base64, 400, 3)


def test_cancel_of_an_open_job(edge: Edge) -> None:
    job_id = edge.submit({"model": MODEL})["jobIdentifier"]
    canceled = edge.http.delete(f"{edge.url}/api/jobs/{job_id}", timeout=TIMEOUT_S).json()
    assert canceled["status"] == "CANCELED"
    assert_grpc_error(edge.append(job_id, "a", "input.txt", b"late", "json"), 400, 9)


@pytest.fixture(scope="module")
def shared_edge() -> Iterator[Edge]:
    with EdgeEmulator(EmulatorConfig(port=0, latency_s=0.0, capacity=0, chunk_size_bytes=64)) as emulator:
        yield Edge(emulator)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    chunks=st.lists(st.binary(max_size=64), min_size=1, max_size=6),
    encoding=st.sampled_from(["json", "multipart"]),
)
def test_any_chunk_sequence_arrives_intact(shared_edge: Edge, chunks: list[bytes], encoding: str) -> None:
    whole = b"".join(chunks)
    assume(not whole.startswith(b"FAIL"))  # that prefix asks the fake model to fail the input
    job_id = shared_edge.submit({"model": MODEL})["jobIdentifier"]
    for chunk in chunks:
        assert shared_edge.append(job_id, "s", "in", chunk, encoding).status_code == 200
    shared_edge.http.post(f"{shared_edge.url}/api/jobs/{job_id}/close", timeout=TIMEOUT_S)
    shared_edge.wait_for(job_id, *TERMINAL)
    inputs = shared_edge.results(job_id)["results"]["s"]["results.json"]["inputs"]
    assert inputs == {"in": {"sha256": sha256(whole), "size": len(whole)}}


# ----- limits and faults ---------------------------------------------------------------------------


def test_embedded_job_over_the_request_limit_is_resource_exhausted(make_edge: Callable[..., Edge]) -> None:
    limit = 64 * 1024
    edge = make_edge(max_request_bytes=limit)
    document = {
        "model": MODEL,
        "input": {"type": "embedded", "sources": {"big": {"input.bin": data_uri(os.urandom(limit))}}},
    }
    size = len(json.dumps(document).encode())
    response = edge.http.post(f"{edge.url}/api/jobs", json=document, timeout=TIMEOUT_S)
    body = assert_grpc_error(response, 429, 8)
    assert body["message"] == f"grpc: received message larger than max ({size} vs. {limit})"
    # The refused body was drained: the same connection still serves the next call.
    assert edge.http.get(f"{edge.url}/api/jobs/features", timeout=TIMEOUT_S).status_code == 200
    stats = edge.emulator.stats()
    assert stats["rejected_too_large"] == 1 and stats["jobs_submitted"] == 0


def test_fail_rate_one_answers_unavailable_but_admin_still_works(make_edge: Callable[..., Edge]) -> None:
    edge = make_edge(fail_rate=1.0)
    for _ in range(3):
        response = edge.http.post(f"{edge.url}/api/jobs", json=text_job({"a": {"k": "v"}}), timeout=TIMEOUT_S)
        assert response.json() == {"code": 14, "message": "unavailable (injected)", "details": []}
        assert response.status_code == 503

    stats = edge.http.get(f"{edge.url}/_emulator/stats", timeout=TIMEOUT_S).json()
    assert stats["failed_calls_injected"] == 3
    assert stats["jobs_submitted"] == 0 and stats["calls"]["submit"] == 0

    assert edge.http.post(f"{edge.url}/_emulator/faults", json={"fail_rate": 0.0}, timeout=TIMEOUT_S).ok
    assert edge.http.get(f"{edge.url}/api/jobs/features", timeout=TIMEOUT_S).status_code == 200
    assert edge.http.post(f"{edge.url}/_emulator/reset", timeout=TIMEOUT_S).ok
    after_reset = edge.emulator.stats()
    assert after_reset["failed_calls_injected"] == 0 and after_reset["calls"]["features"] == 0


def test_forgotten_jobs_are_not_found(edge: Edge) -> None:
    first = edge.submit(text_job({"a": {"input.txt": "x"}}))["jobIdentifier"]
    edge.emulator.forget_all_jobs()
    for response in (
        edge.http.get(f"{edge.url}/api/jobs/{first}", timeout=TIMEOUT_S),
        edge.http.get(f"{edge.url}/api/results/{first}", timeout=TIMEOUT_S),
        edge.http.delete(f"{edge.url}/api/jobs/{first}", timeout=TIMEOUT_S),
    ):
        assert_grpc_error(response, 404, 5)

    second = edge.submit(text_job({"a": {"input.txt": "y"}}))["jobIdentifier"]
    forget = edge.http.post(f"{edge.url}/_emulator/faults", json={"forget_jobs": True}, timeout=TIMEOUT_S)
    assert forget.ok
    assert_grpc_error(edge.http.get(f"{edge.url}/api/jobs/{second}", timeout=TIMEOUT_S), 404, 5)
    assert [job.get("forgotten") for job in edge.emulator.stats()["jobs"]] == [True, True]


def test_stop_refuses_connections_and_start_serves_the_same_port_again(edge: Edge) -> None:
    job_id = edge.submit(text_job({"a": {"input.txt": "survives"}}))["jobIdentifier"]
    url, port = edge.url, edge.emulator.port

    edge.emulator.stop()
    with pytest.raises(requests.ConnectionError):
        edge.http.get(f"{url}/api/jobs/features", timeout=TIMEOUT_S)  # the pooled connection was cut
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))

    edge.emulator.start()
    assert edge.emulator.port == port and edge.emulator.url == url
    assert edge.wait_for(job_id, *TERMINAL) == "COMPLETE"  # job state outlived the outage


def test_stats_list_every_job(edge: Edge) -> None:
    edge.submit(text_job({"a": {"input.txt": "abc"}}))
    edge.submit({"model": MODEL})
    jobs = edge.emulator.stats()["jobs"]
    assert [(job["input_type"], job["model"], job["version"]) for job in jobs] == [
        ("text", "ed542963de", "1.0.1"),
        ("open", "ed542963de", "1.0.1"),
    ]
    assert jobs[0]["inputs"] == {"a": {"input.txt": {"sha256": sha256(b"abc"), "size": 3}}}
    assert jobs[1]["status"] == "OPEN" and jobs[1]["inputs"] == {}
    json.dumps(edge.emulator.stats())  # JSON-able


# ----- the command line ----------------------------------------------------------------------------


def test_cli_prints_its_url_and_exits_cleanly_on_sigterm() -> None:
    command = [
        sys.executable,
        "-c",
        "import sys; from worker.emulator import main; sys.exit(main(sys.argv[1:]))",
        "--port",
        "0",
        "--latency",
        "0.01",
        "--capacity",
        "4",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = json.loads(process.stdout.readline())
        assert line["event"] == "emulator_listening"
        assert requests.get(f"{line['url']}/api/jobs/features", timeout=TIMEOUT_S).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=TIMEOUT_S) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cli_bad_usage_exits_64() -> None:
    from worker.emulator import main

    with pytest.raises(SystemExit) as exited:
        main(["--capacity", "many"])
    assert exited.value.code == 64
    assert main(["--chunk-size", "lots"]) == 64


# ----- gateway generations (chunk bodies) ----------------------------------------------------------


def post_chunk(edge: Edge, job_id: str, body: bytes, content_type: str = "application/json") -> requests.Response:
    url = f"{edge.url}/api/jobs/{job_id}/s/in"
    return edge.http.post(url, data=body, headers={"Content-Type": content_type}, timeout=TIMEOUT_S)


def test_older_gateway_refuses_base64_chunks_and_appends_nothing_for_them(make_edge: Callable[..., Edge]) -> None:
    edge = make_edge(gateway="v2.0")
    job_id = edge.submit({"model": MODEL})["jobIdentifier"]
    refused = post_chunk(edge, job_id, json.dumps(base64.b64encode(b"lost").decode()).encode())
    assert refused.status_code == 400
    assert refused.json() == {
        "code": 3,
        "message": "json: cannot unmarshal string into Go value of type []json.RawMessage",
        "details": [],
    }
    multipart = edge.http.post(
        f"{edge.url}/api/jobs/{job_id}/s/in", files={"input": ("chunk", b"lost too")}, timeout=TIMEOUT_S
    )
    assert_grpc_error(multipart, 400, 3)
    assert post_chunk(edge, job_id, json.dumps(list(b"hello")).encode()).status_code == 200
    assert post_chunk(edge, job_id, b"").status_code == 200  # an empty body: a zero-length chunk
    assert post_chunk(edge, job_id, b"null").status_code == 200
    assert post_chunk(edge, job_id, json.dumps(list(b", world")).encode()).status_code == 200

    assert edge.http.post(f"{edge.url}/api/jobs/{job_id}/close", timeout=TIMEOUT_S).status_code == 200
    assert edge.wait_for(job_id, *TERMINAL) == "COMPLETE"
    inputs = edge.results(job_id)["results"]["s"]["results.json"]["inputs"]
    assert inputs == {"in": {"sha256": sha256(b"hello, world"), "size": 12}}
    stats = edge.emulator.stats()
    assert stats["chunks_refused"] == 2 and stats["chunks_appended"] == 4
    assert stats["calls"]["chunk"] == 6


def test_newer_gateway_takes_base64_strings_and_byte_arrays(edge: Edge) -> None:
    job_id = edge.submit({"model": MODEL})["jobIdentifier"]
    assert post_chunk(edge, job_id, json.dumps(base64.b64encode(b"\x00\xff").decode()).encode()).status_code == 200
    assert post_chunk(edge, job_id, json.dumps([1, 2, 255]).encode()).status_code == 200
    assert post_chunk(edge, job_id, b"null").status_code == 200
    edge.http.post(f"{edge.url}/api/jobs/{job_id}/close", timeout=TIMEOUT_S)
    edge.wait_for(job_id, *TERMINAL)
    inputs = edge.results(job_id)["results"]["s"]["results.json"]["inputs"]
    assert inputs == {"in": {"sha256": sha256(b"\x00\xff\x01\x02\xff"), "size": 5}}
    assert edge.emulator.stats()["chunks_refused"] == 0


@pytest.mark.parametrize("gateway", ["v2.0", "v2.15.2"])
@pytest.mark.parametrize("body", [b"[256]", b"[-1]", b"[true]", b'["a"]', b"[1.5]", b"{}", b"7", b"not json"])
def test_chunk_bodies_no_gateway_takes(make_edge: Callable[..., Edge], gateway: str, body: bytes) -> None:
    edge = make_edge(gateway=gateway)
    job_id = edge.submit({"model": MODEL})["jobIdentifier"]
    assert_grpc_error(post_chunk(edge, job_id, body), 400, 3)
    assert edge.emulator.stats()["chunks_refused"] == 1


def test_gateway_must_be_a_version() -> None:
    with pytest.raises(ValueError, match="gateway 'old'"):
        EdgeEmulator(EmulatorConfig(gateway="old"))
    from worker.emulator import main

    assert main(["--gateway", "latest"]) == 64


# ----- listing jobs --------------------------------------------------------------------------------


def test_get_jobs_lists_summaries_and_filters_by_job_filter_fields(edge: Edge) -> None:
    before = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
    text = edge.submit(text_job({"doc": {"input.txt": "x"}}))["jobIdentifier"]
    opened = edge.submit({"model": MODEL})["jobIdentifier"]
    other = edge.submit(
        {"model": {"identifier": "sha256", "version": "1.0.0"}, "input": {"type": "text", "sources": {"a": {"k": "v"}}}}
    )["jobIdentifier"]

    def listed(**query: str) -> list[dict[str, Any]]:
        response = edge.http.get(f"{edge.url}/api/jobs", params=query, timeout=TIMEOUT_S)
        assert response.status_code == 200, response.text
        answer: list[dict[str, Any]] = response.json()
        return answer

    everything = listed()
    assert [job["jobIdentifier"] for job in everything] == [text, opened, other]
    assert set(everything[1]) == {"jobIdentifier", "status", "model"}
    assert everything[1]["status"] == "OPEN"
    assert everything[2]["model"] == {"identifier": "sha256", "version": "1.0.0", "name": "Emulated sha256"}
    assert [job["jobIdentifier"] for job in listed(model="sha256")] == [other]
    assert [job["jobIdentifier"] for job in listed(status="OPEN")] == [opened]
    assert len(listed(startDate=before, endDate=later)) == 3
    assert len(listed(start_date=before, end_date=later)) == 3  # proto names work as well as JSON names
    assert listed(startDate=later) == [] and listed(endDate=before) == []
    body = assert_grpc_error(edge.http.get(f"{edge.url}/api/jobs?startDate=yesterday", timeout=TIMEOUT_S), 400, 3)
    assert "start_date" in body["message"] and "yesterday" in body["message"]
    # The details of a listed job still name its sources, so a client can adopt it.
    details = edge.http.get(f"{edge.url}/api/jobs/{text}", timeout=TIMEOUT_S).json()
    assert details["jobInputs"] == [{"identifier": "doc"}]
    edge.emulator.forget_all_jobs()
    assert listed() == []
    assert edge.emulator.stats()["calls"]["list"] == 9
