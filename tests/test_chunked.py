"""Large inputs go the chunked way, byte-identical at every size around the chunk boundary."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Producer, ReplyCollector
from worker.edge import HttpEdgeClient
from worker.emulator import EdgeEmulator, EmulatorConfig

CHUNK = 1000  # the emulator reports "1K"; the client takes the smaller reading, 1000 bytes
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7]


@pytest.fixture(scope="module")
def small_chunk_edge() -> Iterator[EdgeEmulator]:
    emu = EdgeEmulator(EmulatorConfig(port=0, latency_s=0.0, capacity=0, chunk_size="1K", chunk_size_bytes=CHUNK))
    emu.start()
    yield emu
    emu.stop()


def _job_record(emu: EdgeEmulator, job_id: str) -> dict[str, Any]:
    jobs = [job for job in emu.stats()["jobs"] if job["id"] == job_id]
    assert len(jobs) == 1
    record: dict[str, Any] = jobs[0]
    return record


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


@pytest.mark.parametrize("size", [CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 1])
def test_worker_sends_inputs_above_the_embed_limit_in_chunks(
    small_chunk_edge: EdgeEmulator,
    worker_factory: Any,
    producer: Producer,
    collector: ReplyCollector,
    size: int,
) -> None:
    worker = worker_factory(small_chunk_edge.url, edge__embed_limit=CHUNK - 2).start()
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
