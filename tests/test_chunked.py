"""Large inputs go the chunked way, byte-identical at every size around the chunk boundary.

Over gRPC (the tests with ids ending in `grpc`) a chunk is AddInputToJob's raw bytes; over HTTP its body is in
edge.chunk_encoding's form. The chunk-encoding and gateway-generation tests are HTTP's alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.conftest import GRPC_PORT, Producer, ReplyCollector, edge_client, edge_url
from worker.edge import HttpEdgeClient
from worker.emulator import EdgeEmulator, EmulatorConfig

CHUNK = 1000  # the emulator reports "1K"; the client takes the smaller reading, 1000 bytes
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7]


def _small_chunk_config(**kwargs: Any) -> EmulatorConfig:
    return EmulatorConfig(port=0, latency_s=0.0, capacity=0, chunk_size="1K", chunk_size_bytes=CHUNK, **kwargs)


@pytest.fixture(scope="module")
def small_chunk_edge() -> Iterator[EdgeEmulator]:
    emu = EdgeEmulator(_small_chunk_config(grpc_port=GRPC_PORT))
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture(scope="module")
def old_gateway_edge() -> Iterator[EdgeEmulator]:
    """The HTTP face as a grpc-gateway older than v2.10.1: a base64 string chunk is refused."""
    emu = EdgeEmulator(_small_chunk_config(gateway="v2.0.1"))
    emu.start()
    yield emu
    emu.stop()


def _job_record(emu: EdgeEmulator, job_id: str) -> dict[str, Any]:
    jobs = [job for job in emu.stats()["jobs"] if job["id"] == job_id]
    assert len(jobs) == 1
    record: dict[str, Any] = jobs[0]
    return record


def _calls_by_face(emu: EdgeEmulator) -> dict[str, int]:
    by_face: dict[str, int] = emu.stats()["calls_by_face"]
    return by_face


@pytest.mark.parametrize("encoding", ["json", "multipart"])
@pytest.mark.parametrize("size", SIZES)
def test_chunked_upload_is_byte_identical_around_the_chunk_size(
    small_chunk_edge: EdgeEmulator, size: int, encoding: str
) -> None:
    edge = HttpEdgeClient(base_url=small_chunk_edge.url, request_timeout_s=10, max_attempts=2, chunk_encoding=encoding)
    data = os.urandom(size)
    before = small_chunk_edge.stats()["calls"].get("chunk", 0)
    job = edge.submit_chunked(model_id="sha256", version="1.0.0", sources={"cam": {"image": data}}, explain=False)
    chunks = small_chunk_edge.stats()["calls"]["chunk"] - before
    assert chunks == max(1, math.ceil(size / CHUNK))  # never a chunk over the edge's limit, none wasted
    record = _job_record(small_chunk_edge, job.job_identifier)
    assert record["input_type"] == "open"
    assert record["inputs"]["cam"]["image"] == {"sha256": hashlib.sha256(data).hexdigest(), "size": size}


@pytest.mark.parametrize("transport", ["grpc"], indirect=True)  # HTTP's are the encodings above
@pytest.mark.parametrize("size", SIZES)
def test_chunked_upload_over_grpc_sends_raw_bytes_byte_identical_around_the_chunk_size(
    small_chunk_edge: EdgeEmulator, size: int, transport: str
) -> None:
    edge = edge_client(small_chunk_edge, transport)
    try:
        data = os.urandom(size)
        before, faces_before = small_chunk_edge.stats()["calls"].get("chunk", 0), _calls_by_face(small_chunk_edge)
        job = edge.submit_chunked(model_id="sha256", version="1.0.0", sources={"cam": {"image": data}}, explain=False)
        chunks = small_chunk_edge.stats()["calls"]["chunk"] - before
        faces = _calls_by_face(small_chunk_edge)
    finally:
        edge.close()
    assert chunks == max(1, math.ceil(size / CHUNK))  # the edge's 1000-byte limit holds for raw bytes
    # Every call of the upload (features, open, each chunk, close) came over gRPC, none over HTTP.
    assert faces["http"] == faces_before["http"]
    assert faces["grpc"] - faces_before["grpc"] >= chunks + 2
    record = _job_record(small_chunk_edge, job.job_identifier)
    assert record["input_type"] == "open"
    # The digest of the bytes the edge appended: the raw input, not an encoding of it.
    assert record["inputs"]["cam"]["image"] == {"sha256": hashlib.sha256(data).hexdigest(), "size": size}


@pytest.mark.both_transports
@pytest.mark.parametrize("size", [CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 1])
def test_worker_sends_inputs_above_the_embed_limit_in_chunks(
    *,
    small_chunk_edge: EdgeEmulator,
    worker_factory: Any,
    producer: Producer,
    collector: ReplyCollector,
    size: int,
    transport: str,
) -> None:
    faces_before = _calls_by_face(small_chunk_edge)
    worker = worker_factory(edge_url(small_chunk_edge, transport), edge__embed_limit=CHUNK - 2).start()
    first, second = os.urandom(size), os.urandom(size // 2)
    mid = producer.publish(
        {"model": {"identifier": "sha256", "version": "1.0.0"}, "sources": {"a": {"x": first}, "b": {"y": second}}}
    )
    reply = collector.wait_finals(1)[mid][0]
    assert reply["status"] == "COMPLETE"
    assert reply["results"]["a"]["inputs"]["x"] == {"sha256": hashlib.sha256(first).hexdigest(), "size": size}
    assert reply["results"]["b"]["inputs"]["y"]["sha256"] == hashlib.sha256(second).hexdigest()
    assert _job_record(small_chunk_edge, reply["job_identifier"])["input_type"] == "open"
    assert worker.terminate() == 0
    faces = _calls_by_face(small_chunk_edge)
    other = "http" if transport == "grpc" else "grpc"
    assert faces[other] == faces_before[other] and faces[transport] > faces_before[transport], faces


@pytest.mark.both_transports
@pytest.mark.parametrize("size", [0, 1])
def test_worker_with_upload_chunked_sends_empty_and_one_byte_inputs_as_one_chunk_each(
    *,
    small_chunk_edge: EdgeEmulator,
    worker_factory: Any,
    producer: Producer,
    collector: ReplyCollector,
    size: int,
    transport: str,
) -> None:
    faces_before, chunks_before = _calls_by_face(small_chunk_edge), small_chunk_edge.stats()["calls"]["chunk"]
    worker = worker_factory(edge_url(small_chunk_edge, transport), edge__upload="chunked").start()
    data = os.urandom(size)
    mid = producer.publish({"model": {"identifier": "sha256", "version": "1.0.0"}, "sources": {"a": {"x": data}}})
    reply = collector.wait_finals(1)[mid][0]
    assert reply["status"] == "COMPLETE", reply
    assert reply["results"]["a"]["inputs"]["x"] == {"sha256": hashlib.sha256(data).hexdigest(), "size": size}
    assert _job_record(small_chunk_edge, reply["job_identifier"])["input_type"] == "open"
    assert small_chunk_edge.stats()["calls"]["chunk"] - chunks_before == 1
    assert worker.terminate() == 0
    faces = _calls_by_face(small_chunk_edge)
    other = "http" if transport == "grpc" else "grpc"
    assert faces[other] == faces_before[other] and faces[transport] > faces_before[transport], faces


def test_embedded_job_over_the_gateway_limit_is_refused_with_429(
    emulator: EdgeEmulator, worker_factory: Any, producer: Producer, collector: ReplyCollector
) -> None:
    # Forced to embed, a 5 MiB input makes a JSON body over the emulator's 4 MiB gRPC limit: the edge answers
    # 429 RESOURCE_EXHAUSTED "larger than max" as a stock gateway does, and the worker reports it, not retries.
    worker = worker_factory(emulator.url, edge__upload="embedded").start()
    mid = producer.publish(
        {"model": {"identifier": "sha256", "version": "1.0.0"}, "sources": {"big": os.urandom(5 << 20)}}
    )
    reply = collector.wait_finals(1, timeout_s=60)[mid][0]
    assert reply["status"] == "ERROR"
    assert reply["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert "larger than max" in reply["error"]["message"]
    stats = emulator.stats()
    assert stats["rejected_too_large"] == 1 and stats["jobs_submitted"] == 0
    # The same request with the default upload = "auto" goes in chunks and completes.
    worker.terminate()
    worker_factory(emulator.url).start()
    data = os.urandom(5 << 20)
    mid = producer.publish({"model": {"identifier": "sha256", "version": "1.0.0"}, "sources": {"big": data}})
    reply = collector.wait_finals(2, timeout_s=60)[mid][0]
    assert reply["status"] == "COMPLETE"
    assert reply["results"]["job"]["inputs"]["big"]["sha256"] == hashlib.sha256(data).hexdigest()


# -- chunk_encoding = "auto" against both gateway generations --------------------------------------------


def _upload(edge: HttpEdgeClient, data: bytes) -> str:
    job = edge.submit_chunked(model_id="sha256", version="1.0.0", sources={"cam": {"image": data}}, explain=False)
    return job.job_identifier


@pytest.mark.parametrize("size", SIZES)
def test_auto_upload_to_an_older_gateway_switches_once_and_is_byte_identical(
    old_gateway_edge: EdgeEmulator, size: int
) -> None:
    edge = HttpEdgeClient(base_url=old_gateway_edge.url, request_timeout_s=10, max_attempts=2)
    expected_chunks = max(1, math.ceil(size / CHUNK))
    for upload in range(2):
        data = os.urandom(size)
        before = old_gateway_edge.stats()
        job_id = _upload(edge, data)
        after = old_gateway_edge.stats()
        refused = after["chunks_refused"] - before["chunks_refused"]
        assert refused == (1 if upload == 0 else 0)  # the first string chunk, once per client and edge
        assert after["chunks_appended"] - before["chunks_appended"] == expected_chunks
        assert after["calls"]["chunk"] - before["calls"].get("chunk", 0) == expected_chunks + refused
        record = _job_record(old_gateway_edge, job_id)
        assert record["inputs"]["cam"]["image"] == {"sha256": hashlib.sha256(data).hexdigest(), "size": size}
        assert edge.chunk_form == "bytes-array"


class _RecordingFront:
    """A pass-through HTTP front that keeps each chunk body it forwards: what the edge saw on the wire."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.chunk_bodies: list[bytes] = []
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command == "POST" and self.path.count("/") == 5:  # /api/jobs/{id}/{source}/{input}
                    front.chunk_bodies.append(body)
                request = urllib.request.Request(
                    front.backend + self.path,
                    data=body if self.command == "POST" else None,
                    method=self.command,
                    headers={"Content-Type": self.headers.get("Content-Type") or "application/json"},
                )
                try:
                    with urllib.request.urlopen(request, timeout=10) as answer:
                        status, raw = answer.status, answer.read()
                except urllib.error.HTTPError as error:
                    status, raw = error.code, error.read()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("size", SIZES)
def test_auto_upload_to_a_newer_gateway_never_sends_a_byte_array(small_chunk_edge: EdgeEmulator, size: int) -> None:
    front = _RecordingFront(small_chunk_edge.url)
    try:
        edge = HttpEdgeClient(base_url=front.url, request_timeout_s=10, max_attempts=2)
        data = os.urandom(size)
        before = small_chunk_edge.stats()["chunks_refused"]
        record = _job_record(small_chunk_edge, _upload(edge, data))
        assert record["inputs"]["cam"]["image"] == {"sha256": hashlib.sha256(data).hexdigest(), "size": size}
        assert small_chunk_edge.stats()["chunks_refused"] == before
        assert len(front.chunk_bodies) == max(1, math.ceil(size / CHUNK))
        assert all(isinstance(json.loads(body), str) for body in front.chunk_bodies)
        assert edge.chunk_form == "json"
    finally:
        front.stop()


def test_worker_in_auto_mode_completes_chunked_jobs_on_an_older_gateway_and_says_so_once(
    old_gateway_edge: EdgeEmulator, worker_factory: Any, producer: Producer, collector: ReplyCollector
) -> None:
    worker = worker_factory(old_gateway_edge.url, edge__embed_limit=CHUNK - 2, worker__concurrency=1).start()
    inputs = [os.urandom(3 * CHUNK + 7), os.urandom(CHUNK + 1)]
    ids = [
        producer.publish({"model": {"identifier": "sha256", "version": "1.0.0"}, "sources": {"big": data}})
        for data in inputs
    ]
    finals = collector.wait_finals(2, timeout_s=60)
    for mid, data in zip(ids, inputs, strict=True):
        reply = finals[mid][0]
        assert reply["status"] == "COMPLETE", reply
        assert reply["results"]["job"]["inputs"]["big"]["sha256"] == hashlib.sha256(data).hexdigest()
    [learned] = worker.events("edge_chunk_encoding_learned")
    assert learned["chunk_encoding"] == "bytes-array"
    assert worker.terminate() == 0
