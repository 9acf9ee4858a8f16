"""The edge HTTP client (edge-http-api.md), over real sockets: against the emulator, and against a tiny stub
server that answers whatever shape a test needs (error shapes, status spellings, snake_case, resets)."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from worker.edge import EdgeClient, EdgeJob, EdgeResults, HttpEdgeClient, normalize_status, parse_size
from worker.emulator import EdgeEmulator, EmulatorConfig
from worker.errors import EdgeError, EdgeRejected, EdgeUnavailable, JobNotFound, ModelNotFound

SHA = ("sha256", "1.0.0")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def client(url: str, *, request_timeout_s: float = 5.0, max_attempts: int = 3, **kwargs: Any) -> HttpEdgeClient:
    return HttpEdgeClient(base_url=url, request_timeout_s=request_timeout_s, max_attempts=max_attempts, **kwargs)


def follow(edge: EdgeClient, job_id: str, timeout_s: float = 10.0) -> EdgeJob:
    deadline = time.monotonic() + timeout_s
    while True:
        job = edge.get_job(job_id)
        if job.terminal:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job.status}"
        time.sleep(0.01)  # sleep-ok: the poll interval of a deadline-bounded wait


# -- a stub edge server ----------------------------------------------------------------------------


@dataclass
class Answer:
    """One scripted answer: a status and a body (a dict is sent as JSON), or a way to misbehave."""

    status: int = 200
    body: Any = None
    content_type: str = "application/json"
    # "close": hang up without answering; "reset": abort with RST; "sleep": wait first; "old_gateway": answer a
    # chunk as a grpc-gateway older than v2.10.1 does (a JSON string refused with `body`, a byte array taken)
    action: str = ""
    sleep_s: float = 0.0


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client_port: int


@dataclass
class Stub:
    """Scripted answers per (method, path); the last answer of a script repeats. Records every request."""

    url: str = ""
    scripts: dict[tuple[str, str], list[Answer]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on(self, method: str, path: str, *answers: Answer) -> None:
        self.scripts[(method, path)] = list(answers)

    def next_answer(self, method: str, path: str) -> Answer:
        with self.lock:
            script = self.scripts.get((method, path))
            if not script:
                return Answer(404, {"code": 5, "message": "Not Found", "details": []})
            return script.pop(0) if len(script) > 1 else script[0]

    def requests(self, method: str, path: str) -> list[Seen]:
        return [s for s in self.seen if (s.method, s.path) == (method, path)]


def _handler(stub: Stub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like a real gateway

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with stub.lock:
                stub.seen.append(Seen(self.command, self.path, dict(self.headers), body, self.client_address[1]))
            answer = stub.next_answer(self.command, self.path)
            if answer.action == "sleep":
                time.sleep(answer.sleep_s)  # sleep-ok: the stub plays an edge too slow to answer
            if answer.action == "old_gateway" and not body.startswith(b"["):
                answer = Answer(400, answer.body)
            elif answer.action == "old_gateway":
                answer = Answer(200, {})
            if answer.action == "close":
                self.close_connection = True
                return
            if answer.action == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()
                return
            raw = answer.body
            if isinstance(raw, dict | list):
                raw = json.dumps(raw).encode()
            raw = raw or b""
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = do_DELETE = _serve

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a reset connection is the point of some tests


@pytest.fixture
def stub() -> Iterator[Stub]:
    state = Stub()
    server = _QuietServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- against the emulator --------------------------------------------------------------------------


def test_embedded_job_runs_and_its_bytes_arrive_intact(emulator: EdgeEmulator) -> None:
    edge = client(emulator.url)
    sources: dict[str, dict[str, bytes | str]] = {
        "cam-1": {"image": bytes(range(256)) * 10, "meta": b"\x00"},
        "cam-2": {"image": b"\xff" * 3},
    }
    receipt = edge.submit_job(model_id="sha256", version="1.0.0", sources=sources, input_type="embedded", explain=False)
    assert receipt.job_identifier
    assert receipt.status in {"SUBMITTED", "IN_PROGRESS"}
    assert receipt.model["identifier"] == "sha256"
    assert receipt.total == 2
    assert sorted(receipt.job_inputs) == ["cam-1", "cam-2"]
    job = follow(edge, receipt.job_identifier)
    assert job.status == "COMPLETE"
    assert (job.total, job.completed, job.failed, job.pending) == (2, 2, 0, 0)
    assert job.created_at and job.updated_at and job.submitted_at
    results = edge.get_results(receipt.job_identifier)
    assert results is not None and results.finished
    for source, inputs in sources.items():
        for key, data in inputs.items():
            assert isinstance(data, bytes)
            assert results.results[source]["inputs"][key] == {"sha256": sha256(data), "size": len(data)}
    assert results.failures == {}


def test_text_job_sends_plain_strings(emulator: EdgeEmulator) -> None:
    edge = client(emulator.url)
    receipt = edge.submit_job(
        model_id="sha256", version="1.0.0", sources={"doc": {"t": "héllo ☃"}}, input_type="text", explain=True
    )
    follow(edge, receipt.job_identifier)
    [job] = emulator.stats()["jobs"]
    assert job["input_type"] == "text"
    assert job["explain"] is True
    assert job["inputs"]["doc"]["t"]["sha256"] == sha256("héllo ☃".encode())


@pytest.mark.parametrize("encoding", ["json", "multipart"])
def test_chunked_upload_respects_the_edge_chunk_size(encoding: str) -> None:
    config = EmulatorConfig(port=0, latency_s=0.01, chunk_size="1K", chunk_size_bytes=1000)
    with EdgeEmulator(config) as emu:
        edge = client(emu.url, chunk_encoding=encoding)
        assert edge.features().chunk_bytes == 1000  # "1K": the smaller reading
        data = bytes(range(256)) * 10  # 2560 bytes: three chunks of at most 1000
        receipt = edge.submit_chunked(
            model_id="sha256", version="1.0.0", sources={"a": {"x": data}, "b": {"y": "text"}}, explain=False
        )
        job = follow(edge, receipt.job_identifier)
        assert job.status == "COMPLETE"
        stats = emu.stats()
        assert stats["calls"]["chunk"] == 3 + 1
        assert stats["jobs_closed"] == 1
        assert stats["jobs"][0]["inputs"] == {
            "a": {"x": {"sha256": sha256(data), "size": len(data)}},
            "b": {"y": {"sha256": sha256(b"text"), "size": 4}},
        }


def test_features_are_read_once_and_cached(emulator: EdgeEmulator) -> None:
    edge = client(emulator.url)
    first = edge.features()
    assert (first.chunk_bytes, first.max_chunks, first.max_inputs) == (1_000_000, 1000, 1000)
    assert edge.features() is first
    assert emulator.stats()["calls"]["features"] == 1


def test_unknown_model_is_model_not_found(emulator: EdgeEmulator) -> None:
    with pytest.raises(ModelNotFound) as info:
        client(emulator.url).submit_job(
            model_id="nope", version="0.0.1", sources={"a": {"i": b"1"}}, input_type="embedded", explain=False
        )
    assert info.value.code == "MODEL_NOT_FOUND"
    assert "nope:0.0.1" in info.value.message
    assert emulator.stats()["calls"]["submit"] == 1  # not retried


def test_edge_refusing_the_job_is_edge_rejected(emulator: EdgeEmulator) -> None:
    with pytest.raises(EdgeRejected) as info:
        client(emulator.url).submit_job(
            model_id="sha256", version="1.0.0", sources={}, input_type="embedded", explain=False
        )
    assert info.value.code == "EDGE_REJECTED"
    assert "HTTP 400" in info.value.message
    assert "input.sources must be a non-empty object" in info.value.message


def test_cancel_stops_a_running_job_and_unknown_jobs_are_none(emulator: EdgeEmulator) -> None:
    edge = client(emulator.url)
    receipt = edge.submit_job(
        model_id="sleep", version="1.0.0", sources={"job": {"seconds": "30"}}, input_type="text", explain=False
    )
    canceled = edge.cancel_job(receipt.job_identifier)
    assert canceled is not None and canceled.status == "CANCELED"
    assert edge.get_job(receipt.job_identifier).status == "CANCELED"
    assert emulator.stats()["jobs_canceled"] == 1
    assert edge.cancel_job("no-such-job") is None


def test_unknown_job_is_job_lost_and_its_results_none(emulator: EdgeEmulator) -> None:
    edge = client(emulator.url)
    with pytest.raises(JobNotFound) as info:
        edge.get_job("no-such-job")
    assert info.value.code == "JOB_LOST"
    assert edge.get_results("no-such-job") is None


def test_failing_inputs_come_back_as_failures(emulator: EdgeEmulator) -> None:
    edge = client(emulator.url)
    receipt = edge.submit_job(
        model_id="sha256",
        version="1.0.0",
        sources={"ok": {"i": b"fine"}, "bad": {"i": b"FAIL!"}},
        input_type="embedded",
        explain=False,
    )
    assert follow(edge, receipt.job_identifier).failed == 1
    results = edge.get_results(receipt.job_identifier)
    assert results is not None
    assert set(results.results) == {"ok"}
    assert set(results.failures) == {"bad"}


def test_answers_probe(emulator: EdgeEmulator) -> None:
    assert client(emulator.url).answers() == (True, "")
    answers, why = client(f"http://127.0.0.1:{free_port()}").answers()
    assert answers is False
    assert "unreachable" in why


def test_edge_outage_is_edge_unavailable_after_max_attempts(emulator: EdgeEmulator) -> None:
    url = emulator.url
    emulator.stop()
    calls: list[tuple[str, str | None]] = []
    edge = client(url, max_attempts=3, on_call=lambda name, _s, kind: calls.append((name, kind)))
    with pytest.raises(EdgeUnavailable) as info:
        edge.get_job("x")
    assert "unreachable" in info.value.message
    assert "after 3 attempts" in info.value.message
    assert info.value.retryable is True
    assert calls == [("status", "connection")] * 3
    emulator.start()  # the fixture stops it again


# -- against the stub: error shapes ----------------------------------------------------------------


def _submit(edge: HttpEdgeClient) -> EdgeJob:
    return edge.submit_job(model_id="m", version="1", sources={"s": {"i": b"x"}}, input_type="embedded", explain=False)


def test_grpc_gateway_not_found_on_submit_is_model_not_found(stub: Stub) -> None:
    stub.on("POST", "/api/jobs", Answer(404, {"code": 5, "message": "model m:1 does not exist", "details": []}))
    with pytest.raises(ModelNotFound) as info:
        _submit(client(stub.url))
    assert "model m:1 does not exist" in info.value.message


def test_grpc_gateway_invalid_argument_is_edge_rejected(stub: Stub) -> None:
    stub.on("POST", "/api/jobs", Answer(400, {"code": 3, "message": "input i: bad data URI", "details": []}))
    with pytest.raises(EdgeRejected) as info:
        _submit(client(stub.url))
    assert info.value.code == "EDGE_REJECTED"
    assert "input i: bad data URI" in info.value.message
    assert len(stub.requests("POST", "/api/jobs")) == 1  # a 400 is never retried


def test_modzy_error_shape_is_read(stub: Stub) -> None:
    modzy = {
        "message": "The model version is not deployed",
        "reportErrorUrl": "https://example.invalid/report",
        "status": "BAD_REQUEST",
        "statusCode": 400,
    }
    stub.on("POST", "/api/jobs", Answer(400, modzy))
    with pytest.raises(EdgeRejected) as info:
        _submit(client(stub.url))
    assert "The model version is not deployed" in info.value.message


def test_non_json_502_is_retried_then_edge_unavailable_naming_the_status(stub: Stub) -> None:
    stub.on("GET", "/api/jobs/j1", Answer(502, b"<html>Bad Gateway</html>", content_type="text/html"))
    with pytest.raises(EdgeUnavailable) as info:
        client(stub.url, max_attempts=3).get_job("j1")
    assert "HTTP 502" in info.value.message
    assert "Bad Gateway" in info.value.message
    assert len(stub.requests("GET", "/api/jobs/j1")) == 3


def test_503_is_retried_then_succeeds(stub: Stub) -> None:
    unavailable = Answer(503, {"code": 14, "message": "connection refused", "details": []})
    done = {"jobIdentifier": "j1", "status": "COMPLETE", "total": 1, "completed": 1}
    stub.on("GET", "/api/jobs/j1", unavailable, unavailable, Answer(200, done))
    job = client(stub.url, max_attempts=5).get_job("j1")
    assert (job.job_identifier, job.status, job.completed) == ("j1", "COMPLETE", 1)
    assert len(stub.requests("GET", "/api/jobs/j1")) == 3


def test_429_too_large_is_payload_too_large_and_not_retried(stub: Stub) -> None:
    message = "grpc: received message larger than max (5242880 vs. 4194304)"
    stub.on("POST", "/api/jobs", Answer(429, {"code": 8, "message": message, "details": []}))
    with pytest.raises(EdgeRejected) as info:
        _submit(client(stub.url))
    assert info.value.code == "PAYLOAD_TOO_LARGE"
    assert len(stub.requests("POST", "/api/jobs")) == 1


def test_413_is_payload_too_large(stub: Stub) -> None:
    stub.on("POST", "/api/jobs", Answer(413, b"Request Entity Too Large", content_type="text/plain"))
    with pytest.raises(EdgeRejected) as info:
        _submit(client(stub.url))
    assert info.value.code == "PAYLOAD_TOO_LARGE"


def test_plain_429_is_transient(stub: Stub) -> None:
    busy = Answer(429, {"code": 8, "message": "too many jobs", "details": []})
    stub.on("POST", "/api/jobs", busy, Answer(200, {"jobIdentifier": "j9", "status": "SUBMITTED"}))
    assert _submit(client(stub.url)).job_identifier == "j9"
    assert len(stub.requests("POST", "/api/jobs")) == 2


@pytest.mark.parametrize("action", ["close", "reset"])
def test_connection_dropped_without_an_answer_mentions_grpc(stub: Stub, action: str) -> None:
    stub.on("GET", "/api/jobs/features", Answer(action=action))
    edge = client(stub.url, max_attempts=2)
    with pytest.raises(EdgeUnavailable) as info:
        edge.features()
    assert "gRPC" in info.value.message
    assert "HTTP gateway" in info.value.message
    answers, why = edge.answers()
    assert answers is False
    assert "gRPC" in why


def test_slow_edge_is_edge_unavailable_after_the_read_timeout(stub: Stub) -> None:
    stub.on("GET", "/api/jobs/j1", Answer(action="sleep", sleep_s=1.0, body={"jobIdentifier": "j1"}))
    started = time.monotonic()
    with pytest.raises(EdgeUnavailable) as info:
        client(stub.url, request_timeout_s=0.2, max_attempts=1).get_job("j1")
    assert "did not answer status within 0.2 s" in info.value.message
    assert time.monotonic() - started < 0.9


def test_retries_stop_at_the_deadline(stub: Stub) -> None:
    stub.on("GET", "/api/jobs/j1", Answer(503, {"code": 14, "message": "down", "details": []}))
    with pytest.raises(EdgeUnavailable) as info:
        client(stub.url, max_attempts=100).get_job("j1", deadline=time.monotonic())
    assert "deadline reached" in info.value.message
    assert len(stub.requests("GET", "/api/jobs/j1")) == 1


def test_answer_that_is_not_json_is_edge_unavailable(stub: Stub) -> None:
    stub.on("GET", "/api/jobs/j1", Answer(200, b"<html>login</html>", content_type="text/html"))
    with pytest.raises(EdgeUnavailable) as info:
        client(stub.url, max_attempts=1).get_job("j1")
    assert "not JSON" in info.value.message


def test_answers_treats_an_http_error_that_is_not_transient_as_answering(stub: Stub) -> None:
    stub.on("GET", "/api/jobs/features", Answer(501, {"code": 12, "message": "Method Not Allowed", "details": []}))
    assert client(stub.url).answers() == (True, "")
    stub.on("GET", "/api/jobs/features", Answer(503, {"code": 14, "message": "warming up", "details": []}))
    answers, why = client(stub.url).answers()
    assert answers is False
    assert "warming up" in why


# -- against the stub: what the client sends -------------------------------------------------------


def test_submission_body_and_headers(stub: Stub) -> None:
    stub.on("POST", "/api/jobs", Answer(200, {"jobIdentifier": "j1", "status": "SUBMITTED"}))
    edge = client(stub.url, api_key="key-123")
    edge.submit_job(
        model_id="m",
        version="1.2.3",
        sources={"s": {"img": b"\x00\xff", "cap": "snow"}},
        input_type="embedded",
        explain=True,
    )
    [seen] = stub.requests("POST", "/api/jobs")
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["Authorization"] == "ApiKey key-123"
    assert json.loads(seen.body) == {
        "model": {"identifier": "m", "version": "1.2.3"},
        "explain": True,
        "input": {
            "type": "embedded",
            "sources": {
                "s": {
                    "img": "data:application/octet-stream;base64," + base64.b64encode(b"\x00\xff").decode(),
                    "cap": "data:application/octet-stream;base64," + base64.b64encode(b"snow").decode(),
                }
            },
        },
    }


def test_no_authorization_header_without_an_api_key(stub: Stub) -> None:
    stub.on("GET", "/api/jobs/j1", Answer(200, {"jobIdentifier": "j1", "status": "COMPLETE"}))
    client(stub.url).get_job("j1")
    assert "Authorization" not in stub.seen[0].headers


def test_path_parts_are_quoted(stub: Stub) -> None:
    stub.on("GET", "/api/jobs/a%2Fb%20c", Answer(200, {"jobIdentifier": "a/b c", "status": "COMPLETE"}))
    assert client(stub.url).get_job("a/b c").job_identifier == "a/b c"


def test_one_connection_per_thread_reused_across_calls(stub: Stub) -> None:
    stub.on("GET", "/api/jobs/j1", Answer(200, {"jobIdentifier": "j1", "status": "COMPLETE"}))
    edge = client(stub.url)

    def work() -> None:
        for _ in range(3):
            edge.get_job("j1")

    worker_a = threading.Thread(target=work)
    worker_a.start()
    worker_a.join()
    after_a = {s.client_port for s in stub.seen}
    worker_b = threading.Thread(target=work)
    worker_b.start()
    worker_b.join()
    after_b = {s.client_port for s in stub.seen}
    assert len(stub.seen) == 6
    assert len(after_a) == 1  # three calls, one keep-alive connection
    assert len(after_b) == 2  # another thread, its own session and connection


# -- status spellings and snake_case -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("edge_status", "status", "terminal"),
    [
        ("COMPLETE", "COMPLETE", True),
        ("COMPLETED", "COMPLETE", True),
        ("completed", "COMPLETE", True),
        ("CANCELED", "CANCELED", True),
        ("CANCELLED", "CANCELED", True),
        ("TIMEDOUT", "TIMEOUT", True),
        ("FAILED", "FAILED", True),
        ("ERROR", "ERROR", True),
        ("QUEUED", "QUEUED", False),
        ("SUBMITTED", "SUBMITTED", False),
        ("IN_PROGRESS", "IN_PROGRESS", False),
        ("FETCHING", "FETCHING", False),
        ("OPEN", "OPEN", False),
        ("UNKNOWN", "UNKNOWN", False),
        ("", "", False),
    ],
)
def test_every_status_spelling(stub: Stub, edge_status: str, status: str, terminal: bool) -> None:
    stub.on("GET", "/api/jobs/j1", Answer(200, {"jobIdentifier": "j1", "status": edge_status}))
    job = client(stub.url).get_job("j1")
    assert (job.status, job.terminal) == (status, terminal)


def test_unknown_status_is_pending() -> None:
    assert normalize_status("PAUSED_FOR_TEA") == "PAUSED_FOR_TEA"
    assert EdgeJob(job_identifier="j", status=normalize_status("PAUSED_FOR_TEA")).terminal is False
    assert normalize_status(None) == ""


def test_snake_case_job_details(stub: Stub) -> None:
    details = {
        "job_identifier": "j1",
        "status": "COMPLETED",
        "model": {"identifier": "m", "version": "1", "name": "My model"},
        "created_at": "2024-01-01T00:00:00.000Z",
        "updated_at": "2024-01-01T00:00:01.000Z",
        "submitted_at": "2024-01-01T00:00:00.100Z",
        "total": 2,
        "pending": 0,
        "completed": 1,
        "failed": 1,
        "elapsed_time": 900,
        "job_inputs": [{"identifier": "a"}, {"identifier": "b"}],
    }
    stub.on("GET", "/api/jobs/j1", Answer(200, details))
    job = client(stub.url).get_job("j1")
    assert job == EdgeJob(
        job_identifier="j1",
        status="COMPLETE",
        model={"identifier": "m", "version": "1", "name": "My model"},
        explain=False,
        total=2,
        pending=0,
        completed=1,
        failed=1,
        job_inputs=["a", "b"],
        created_at="2024-01-01T00:00:00.000Z",
        updated_at="2024-01-01T00:00:01.000Z",
        submitted_at="2024-01-01T00:00:00.100Z",
        elapsed_ms=900,
    )


def test_snake_case_receipt_with_details(stub: Stub) -> None:
    receipt = {
        "job_identifier": "j2",
        "model": {"identifier": "m", "version": "1"},
        "total_inputs": 3,
        "job_inputs": {"identifier": ["a", "b", "c"]},
        "submitted_at": "2024-01-01T00:00:00.000Z",
        "status": "SUBMITTED",
        "details": {"created_at": "2024-01-01T00:00:00.000Z", "pending": 3, "elapsed_time": 0},
        "explain": True,
    }
    stub.on("POST", "/api/jobs", Answer(200, receipt))
    job = _submit(client(stub.url))
    assert (job.job_identifier, job.status, job.total, job.pending) == ("j2", "SUBMITTED", 3, 3)
    assert job.job_inputs == ["a", "b", "c"]
    assert job.created_at == "2024-01-01T00:00:00.000Z"
    assert job.explain is True


def test_receipt_with_null_details_and_camel_case(stub: Stub) -> None:
    receipt = {"jobIdentifier": "j3", "totalInputs": 2, "jobInputs": {"identifier": ["a", "b"]}, "details": None}
    stub.on("POST", "/api/jobs", Answer(200, receipt))
    job = _submit(client(stub.url))
    assert (job.job_identifier, job.total, job.job_inputs, job.status) == ("j3", 2, ["a", "b"], "")


def test_snake_case_results(stub: Stub) -> None:
    results = {
        "job_identifier": "j1",
        "finished": True,
        "elapsed_time": 1234,
        "results": {"a": {"status": "SUCCESSFUL", "results.json": {"label": "cat"}}, "b": {"status": "SUCCESSFUL"}},
        "failures": {"c": {"@type": "type.googleapis.com/google.protobuf.Struct", "error": "bad"}},
    }
    stub.on("GET", "/api/results/j1", Answer(200, results))
    got = client(stub.url).get_results("j1")
    assert got == EdgeResults(
        finished=True,
        results={"a": {"label": "cat"}, "b": {"status": "SUCCESSFUL"}},
        failures={"c": {"@type": "type.googleapis.com/google.protobuf.Struct", "error": "bad"}},
        elapsed_ms=1234,
    )


def test_results_not_ready_is_none(stub: Stub) -> None:
    stub.on("GET", "/api/results/j1", Answer(404, {"code": 5, "message": "not ready", "details": []}))
    assert client(stub.url).get_results("j1") is None


def test_features_in_snake_case_and_unreadable_sizes(stub: Stub) -> None:
    snake = {"input_chunk_maximum_size": "512Ki", "maximum_input_chunks": 7, "maximum_inputs_per_job": 9}
    stub.on("GET", "/api/jobs/features", Answer(200, snake))
    features = client(stub.url).features()
    assert (features.chunk_bytes, features.max_chunks, features.max_inputs) == (524_288, 7, 9)
    stub.on("GET", "/api/jobs/features", Answer(200, {"inputChunkMaximumSize": "lots"}))
    fallback = client(stub.url).features()
    assert (fallback.chunk_bytes, fallback.max_chunks, fallback.max_inputs) == (1 << 20, None, None)


def test_chunked_upload_to_an_edge_without_open_jobs_is_edge_rejected(stub: Stub) -> None:
    stub.on("GET", "/api/jobs/features", Answer(200, {"inputChunkMaximumSize": "1M"}))
    stub.on("POST", "/api/jobs", Answer(200, {"jobIdentifier": "j1", "status": "OPEN"}))
    stub.on("POST", "/api/jobs/j1/s/i", Answer(501, {"code": 12, "message": "Method Not Allowed", "details": []}))
    stub.on("DELETE", "/api/jobs/j1", Answer(200, {"jobIdentifier": "j1", "status": "CANCELED"}))
    with pytest.raises(EdgeRejected) as info:
        client(stub.url).submit_chunked(model_id="m", version="1", sources={"s": {"i": b"x"}}, explain=False)
    assert "HTTP 501" in info.value.message
    assert len(stub.requests("DELETE", "/api/jobs/j1")) == 1  # the open job is abandoned, not left behind


# -- parse_size ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1M", 1_000_000),
        ("1Mi", 1_048_576),
        ("1MB", 1_000_000),  # KB/MB: 1024 in the SDK, 1000 by SI; the smaller reading wins
        ("512Ki", 524_288),
        ("4K", 4000),
        ("4k", 4000),
        (" 2 G ", 2_000_000_000),
        ("1T", 1_000_000_000_000),
        ("1.5M", 1_500_000),
        ("1024", 1024),
        (1048576, 1_048_576),
        (2.5, 2),
        ("0", None),
        (0, None),
        ("", None),
        (None, None),
        ("lots", None),
        ("-1M", None),
        ("1X", None),
        (True, None),
    ],
)
def test_parse_size(text: Any, size: int | None) -> None:
    assert parse_size(text) == size


def test_errors_are_edge_errors_with_contract_codes() -> None:
    codes: dict[type[EdgeError], str] = {
        ModelNotFound: "MODEL_NOT_FOUND",
        EdgeRejected: "EDGE_REJECTED",
        EdgeUnavailable: "EDGE_UNAVAILABLE",
        JobNotFound: "JOB_LOST",
    }
    for error_type, code in codes.items():
        assert error_type("x").as_reply_error()["code"] == code


# -- calls that must not be repeated blindly -------------------------------------------------------------


def test_a_chunk_that_may_have_arrived_is_not_sent_again_and_the_open_job_is_abandoned(stub: Stub) -> None:
    # The edge takes the chunk but answers too late: sending it again would append it twice.
    stub.on("GET", "/api/jobs/features", Answer(200, {"inputChunkMaximumSize": "1M"}))
    stub.on("POST", "/api/jobs", Answer(200, {"jobIdentifier": "open-1", "status": "OPEN"}))
    stub.on("POST", "/api/jobs/open-1/s/i", Answer(200, {}, action="sleep", sleep_s=1.5))
    stub.on("DELETE", "/api/jobs/open-1", Answer(200, {"jobIdentifier": "open-1", "status": "CANCELED"}))
    edge = client(stub.url, request_timeout_s=0.5, max_attempts=5)
    with pytest.raises(EdgeUnavailable) as raised:
        edge.submit_chunked(model_id="m", version="1", sources={"s": {"i": b"x" * 10}}, explain=False)
    assert raised.value.maybe_sent
    assert len(stub.requests("POST", "/api/jobs/open-1/s/i")) == 1
    assert len(stub.requests("DELETE", "/api/jobs/open-1")) == 1
    assert not stub.requests("POST", "/api/jobs/open-1/close")


def test_a_refused_connection_is_retried_even_for_a_chunk() -> None:
    # Nothing was sent: retrying is safe, and it is what the retries are for. A closed port refuses at once.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    edge = client(f"http://127.0.0.1:{port}", max_attempts=3)
    with pytest.raises(EdgeUnavailable) as raised:
        edge._exchange("POST", "/api/jobs/x/s/i", "chunk", {}, data=b'""', idempotent=False)
    assert not raised.value.maybe_sent
    assert "after 3 attempts" in raised.value.message


def test_a_submission_whose_answer_was_lost_is_sent_again_and_flagged(stub: Stub) -> None:
    # The edge may have created the first job: the receipt says the submission was repeated, so the
    # worker can log edge_job_maybe_duplicated with the request's context.
    stub.on("POST", "/api/jobs", Answer(action="close"), Answer(200, {"jobIdentifier": "j2", "status": "SUBMITTED"}))
    job = client(stub.url, max_attempts=3).submit_job(
        model_id="m", version="1", sources={"s": {"i": "x"}}, input_type="text", explain=False
    )
    assert job.job_identifier == "j2" and job.maybe_duplicated
    assert len(stub.requests("POST", "/api/jobs")) == 2
    clean = client(stub.url).submit_job(
        model_id="m", version="1", sources={"s": {"i": "x"}}, input_type="text", explain=False
    )
    assert not clean.maybe_duplicated


# -- chunk bodies for both gateway generations --------------------------------------------------------------

OLD_GATEWAY = {
    "code": 3,
    "message": "json: cannot unmarshal string into Go value of type []json.RawMessage",
    "details": [],
}


def _open_job_stub(stub: Stub, chunk: Answer, *, job_id: str = "o1") -> str:
    stub.on("GET", "/api/jobs/features", Answer(200, {"inputChunkMaximumSize": "4"}))
    stub.on("POST", "/api/jobs", Answer(200, {"jobIdentifier": job_id, "status": "OPEN"}))
    stub.on("POST", f"/api/jobs/{job_id}/s/i", chunk)
    stub.on("POST", f"/api/jobs/{job_id}/close", Answer(200, {"jobIdentifier": job_id, "status": "SUBMITTED"}))
    stub.on("DELETE", f"/api/jobs/{job_id}", Answer(200, {"jobIdentifier": job_id, "status": "CANCELED"}))
    return f"/api/jobs/{job_id}/s/i"


def _chunk_bodies(stub: Stub, path: str) -> list[Any]:
    return [json.loads(seen.body) for seen in stub.requests("POST", path)]


def _upload(edge: HttpEdgeClient, data: bytes) -> EdgeJob:
    return edge.submit_chunked(model_id="m", version="1", sources={"s": {"i": data}}, explain=False)


def test_auto_sends_the_refused_chunk_again_as_a_byte_array_and_keeps_that_form(stub: Stub) -> None:
    from structlog.testing import capture_logs

    path = _open_job_stub(stub, Answer(body=OLD_GATEWAY, action="old_gateway"))
    edge = client(stub.url)
    assert edge.chunk_encoding == "auto" and edge.chunk_form == "json"
    data = bytes(range(250, 256)) + b"\x00\x01\x02\x03"  # 10 bytes: chunks of 4, 4, 2
    with capture_logs() as logs:
        assert _upload(edge, data).job_identifier == "o1"
        assert _upload(edge, data).job_identifier == "o1"  # a later job goes straight to byte arrays
    bodies = _chunk_bodies(stub, path)
    first = base64.b64encode(data[:4]).decode()
    # The refused string, the same chunk again as an array, the rest as arrays; the second job arrays only.
    assert bodies == [
        first,
        list(data[:4]),
        list(data[4:8]),
        list(data[8:]),
        list(data[:4]),
        list(data[4:8]),
        list(data[8:]),
    ]
    assert edge.chunk_form == "bytes-array"
    learned = [entry for entry in logs if entry["event"] == "edge_chunk_encoding_learned"]
    assert len(learned) == 1
    assert learned[0]["chunk_encoding"] == "bytes-array" and "RawMessage" in learned[0]["edge_message"]
    assert not stub.requests("DELETE", "/api/jobs/o1")  # nothing abandoned: the switch is not a failure
    # Learned per client (per edge): a new client starts from the string form again.
    fresh = client(stub.url)
    _upload(fresh, b"ab")
    assert _chunk_bodies(stub, path)[-2:] == [base64.b64encode(b"ab").decode(), list(b"ab")]


def test_auto_against_a_newer_gateway_never_sends_a_byte_array(stub: Stub) -> None:
    path = _open_job_stub(stub, Answer(200, {}))
    edge = client(stub.url)
    for _ in range(2):
        _upload(edge, b"0123456789")
    bodies = _chunk_bodies(stub, path)
    assert len(bodies) == 6 and all(isinstance(body, str) for body in bodies)
    assert edge.chunk_form == "json"


def test_auto_takes_a_bare_code_3_as_the_older_gateway_only_on_the_first_chunk(stub: Stub) -> None:
    # A gateway that words its refusal otherwise still answers code 3 to the first string chunk it sees.
    vague = {"code": 3, "message": "bad body", "details": []}
    path = _open_job_stub(stub, Answer(body=vague, action="old_gateway"))
    edge = client(stub.url)
    _upload(edge, b"abcd")
    assert _chunk_bodies(stub, path) == [base64.b64encode(b"abcd").decode(), list(b"abcd")]
    # Once a string chunk was taken the edge is a newer gateway: a later code 3 is the edge's verdict.
    stub.on("POST", path, Answer(200, {}), Answer(400, vague))
    newer = client(stub.url)
    with pytest.raises(EdgeRejected) as info:
        _upload(newer, b"abcdefgh")
    assert "bad body" in info.value.message
    assert [type(body) for body in _chunk_bodies(stub, path)[-2:]] == [str, str]
    assert newer.chunk_form == "json"
    assert len(stub.requests("DELETE", "/api/jobs/o1")) == 1


def test_auto_does_not_learn_a_form_the_edge_refuses_too(stub: Stub) -> None:
    path = _open_job_stub(stub, Answer(400, OLD_GATEWAY))
    edge = client(stub.url)
    with pytest.raises(EdgeRejected) as info:
        _upload(edge, b"abc")
    assert info.value.code == "EDGE_REJECTED" and "RawMessage" in info.value.message
    assert _chunk_bodies(stub, path) == [base64.b64encode(b"abc").decode(), list(b"abc")]
    assert edge.chunk_form == "json"
    assert len(stub.requests("DELETE", "/api/jobs/o1")) == 1


@pytest.mark.parametrize(("encoding", "expected"), [("json", ["YWJj"]), ("bytes-array", [[97, 98, 99]])])
def test_a_fixed_chunk_encoding_never_switches(stub: Stub, encoding: str, expected: list[Any]) -> None:
    path = _open_job_stub(stub, Answer(body=OLD_GATEWAY, action="old_gateway"))
    edge = client(stub.url, chunk_encoding=encoding)
    if encoding == "json":
        with pytest.raises(EdgeRejected):
            _upload(edge, b"abc")
    else:
        _upload(edge, b"abc")
    assert _chunk_bodies(stub, path) == expected
    assert edge.chunk_form == encoding


def test_an_unknown_chunk_encoding_is_refused() -> None:
    with pytest.raises(ValueError, match="chunk_encoding: expected one of auto, json, bytes-array, multipart"):
        client("http://127.0.0.1:1", chunk_encoding="base85")


def test_a_failure_holding_a_struct_is_one_flat_object(stub: Stub) -> None:
    # protobuf's JSON nests a well-known type packed in an Any under "value"; the gRPC client sees the same.
    struct_type = "type.googleapis.com/google.protobuf.Struct"
    results = {
        "finished": True,
        "failures": {
            "a": {"@type": struct_type, "value": {"error": "bad"}},
            "b": {"@type": "x/common.v1.Error", "message": "m"},
        },
    }
    stub.on("GET", "/api/results/j1", Answer(200, results))
    got = client(stub.url).get_results("j1")
    assert got is not None
    assert got.failures == {
        "a": {"@type": struct_type, "error": "bad"},
        "b": {"@type": "x/common.v1.Error", "message": "m"},
    }


def test_list_jobs_reads_the_gateways_bare_array(emulator: EdgeEmulator) -> None:
    edge = client(emulator.url)
    job = edge.submit_job(
        model_id="sha256", version="1.0.0", sources={"a": {"i": b"1"}}, input_type="embedded", explain=False
    )
    listed = {summary.job_identifier: summary for summary in edge.list_jobs()}
    assert listed[job.job_identifier].model == {"identifier": "sha256", "version": "1.0.0"}
    assert listed[job.job_identifier].status in {"SUBMITTED", "IN_PROGRESS", "COMPLETE"}


def test_traceparent_travels_as_a_header_of_that_call_only(stub: Stub) -> None:
    stub.on("GET", "/api/jobs/j1", Answer(200, {"jobIdentifier": "j1", "status": "COMPLETE"}))
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    edge = client(stub.url)
    edge.get_job("j1", traceparent=parent)
    edge.get_job("j1")
    first, second = stub.requests("GET", "/api/jobs/j1")
    assert first.headers["traceparent"] == parent
    assert "traceparent" not in {key.lower() for key in second.headers}
