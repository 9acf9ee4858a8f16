"""JobRunner without a broker: deliveries handed in directly, a real emulator over HTTP or gRPC, a real journal.

What the broker-level tests cannot see from outside: the running marks the journal is left with, and that
the first-look share learns from jobs submitted here and from nothing else.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import msgpack
import pika
import pytest
import structlog
import structlog.testing

from tests.conftest import GRPC_PORT, assert_spoke_only, edge_client
from worker.edge import EdgeClient, Features, HttpEdgeClient
from worker.emulator import EdgeEmulator, EmulatorConfig
from worker.jobs import FIRST_LOOK_SHARE_START, EdgeGate, JobRunner, JobSettings, Outcome
from worker.journal import Journal
from worker.messages import route_from_properties
from worker.metrics import Metrics

SHA_MODEL = {"identifier": "sha256", "version": "1.0.0"}
MODEL_KEY = ("sha256", "1.0.0")


@dataclass
class Rig:
    runner: JobRunner
    journal: Journal
    client: EdgeClient
    emulator: EdgeEmulator

    def deliver(self, message_id: str, payload: bytes, *, delivery_count: int = 0) -> Outcome:
        headers = {"x-delivery-count": delivery_count} if delivery_count else None
        props = pika.BasicProperties(
            message_id=message_id, correlation_id=message_id, content_type="application/msgpack", headers=headers
        )
        body = msgpack.packb({"model": SHA_MODEL, "sources": {"s": {"i": payload}}}, use_bin_type=True)
        return self.runner.handle(body, props, route_from_properties(props))

    def row(self, key: str) -> Any:
        with sqlite3.connect(str(self.journal.path)) as db:
            return db.execute(
                "SELECT running_by, reply IS NOT NULL, submits FROM requests WHERE key = ?", (key,)
            ).fetchone()


def job_settings(*, upload: str) -> JobSettings:
    return JobSettings(
        job_timeout_s=30,
        max_timeout_s=60,
        max_request_bytes=1 << 20,
        delivery_limit=3,
        count_deliveries_in_journal=False,
        max_resubmits=1,
        upload=upload,
        embed_limit=1 << 20,
    )


@pytest.fixture
def rig(tmp_path: Path, transport: str) -> Iterator[Rig]:
    """The lifecycle over the test's transport: the worker's own client for it, from make_edge_client."""
    with EdgeEmulator(EmulatorConfig(port=0, grpc_port=GRPC_PORT, latency_s=0.02, capacity=4)) as emulator:
        client = edge_client(emulator, transport)
        gate = EdgeGate(client)
        journal = Journal(tmp_path / "journal.sqlite3", retention_s=600)
        settings = job_settings(upload="embedded")
        runner = JobRunner(edge=client, gate=gate, journal=journal, settings=settings, metrics=Metrics())
        try:
            yield Rig(runner, journal, client, emulator)
        finally:
            runner.stop()
            gate.stop()
            journal.close()
            client.close()


@pytest.mark.both_transports
def test_a_finished_job_leaves_its_reply_and_no_running_mark(rig: Rig, transport: str) -> None:
    outcome = rig.deliver("m1", b"one")
    assert outcome.status == "COMPLETE" and outcome.journaled
    assert rig.row("m1") == (None, 1, 1)  # the reply's own commit took the mark off
    replay = rig.deliver("m1", b"one")
    assert replay.status == "REPLAYED" and replay.reply == outcome.reply
    assert rig.row("m1") == (None, 1, 1)  # a replay marks nothing
    assert_spoke_only(rig.emulator, transport)


@pytest.mark.both_transports
def test_the_first_look_share_learns_from_jobs_submitted_here_only(rig: Rig, transport: str) -> None:
    assert rig.runner.estimator.share(MODEL_KEY) == FIRST_LOOK_SHARE_START
    for n in range(5):
        assert rig.deliver(f"m{n}", b"x%d" % n).status == "COMPLETE"
    learnt = rig.runner.estimator.share(MODEL_KEY)
    assert learnt != FIRST_LOOK_SHARE_START  # every first look taught it something
    # A job already at the edge when its request is redelivered: resumed, not submitted; no round trip of
    # ours to learn from.
    job = rig.client.submit_job(
        model_id="sha256", version="1.0.0", sources={"s": {"i": b"resumed"}}, input_type="embedded", explain=False
    )
    rig.journal.record_delivery("resumed")
    rig.journal.record_job("resumed", job.job_identifier)
    submitted = rig.emulator.stats()["jobs_submitted"]
    outcome = rig.deliver("resumed", b"resumed")
    assert outcome.status == "COMPLETE"
    assert rig.emulator.stats()["jobs_submitted"] == submitted  # resumed, not submitted again
    assert rig.runner.estimator.share(MODEL_KEY) == learnt
    assert_spoke_only(rig.emulator, transport)


@pytest.mark.both_transports
def test_a_request_over_its_delivery_limit_leaves_a_live_workers_mark_alone(rig: Rig, transport: str) -> None:
    """Two workers sharing a state_dir: the one that dead-letters a redelivery must not clear the other's."""
    other = Journal(rig.journal.path, retention_s=600)
    try:
        other.process_token = "1:another-worker"  # pid 1 is alive
        other.record_delivery("k")
        other.record_running("k", isolated=False)
        outcome = rig.deliver("k", b"k", delivery_count=5)
        assert outcome.status == "ERROR" and outcome.dead_letter is not None
        assert outcome.dead_letter.code == "DELIVERY_LIMIT"
        assert rig.row("k")[0] == "1:another-worker"
        assert rig.emulator.stats()["jobs_submitted"] == 0  # dead-lettered, never sent to the edge
    finally:
        other.close()


class _SmallEdge(HttpEdgeClient):
    """The real client to the real emulator, reporting the smaller limits of another edge's features.

    HTTP only: the limits are checked by the lifecycle from Features, before any transport carries a chunk, so
    a gRPC twin would test the same code again."""

    def features(self) -> Features:
        super().features()  # asked over HTTP as always; only the answer is another edge's
        return Features(chunk_bytes=1024, max_chunks=2, max_inputs=2)


@pytest.mark.parametrize(
    ("sources", "code", "limit"),
    [
        ({"s": {"i": b"x" * 2049}}, "PAYLOAD_TOO_LARGE", "at most 2 per input (maximumInputChunks)"),
        ({f"s{n}": {"i": b"x"} for n in range(3)}, "EDGE_REJECTED", "at most 2 per job (maximumInputsPerJob)"),
    ],
)
def test_a_chunked_request_over_the_edges_limits_is_refused_before_any_upload(
    tmp_path: Path, sources: dict[str, dict[str, bytes]], code: str, limit: str
) -> None:
    with EdgeEmulator(EmulatorConfig(port=0, latency_s=0.0, capacity=4)) as emulator:
        client = _SmallEdge(base_url=emulator.url, request_timeout_s=10, max_attempts=2)
        gate = EdgeGate(client)
        settings = job_settings(upload="chunked")
        runner = JobRunner(edge=client, gate=gate, journal=None, settings=settings, metrics=Metrics())
        try:

            def deliver(message_id: str, request_sources: dict[str, dict[str, bytes]]) -> Outcome:
                props = pika.BasicProperties(message_id=message_id, content_type="application/msgpack")
                body = msgpack.packb({"model": SHA_MODEL, "sources": request_sources}, use_bin_type=True)
                return runner.handle(body, props, route_from_properties(props))

            within = deliver("within", {"s": {"i": b"x" * 2048}})  # two chunks of 1024: allowed
            assert within.status == "COMPLETE"
            opened = emulator.stats()["jobs_submitted"]
            refused = deliver("over", sources)
            assert refused.status == "ERROR" and refused.reply is not None
            error = msgpack.unpackb(refused.reply, raw=False)["error"]
            assert error["code"] == code
            assert limit in error["message"], error
            assert emulator.stats()["jobs_submitted"] == opened  # refused before the edge opened a job
        finally:
            runner.stop()
            gate.stop()


def finished_lines(logs: list[Any]) -> list[Any]:
    return [line for line in logs if line["event"] == "job_finished"]


def test_every_path_through_the_runner_writes_one_job_finished_and_brings_the_gauge_back(tmp_path: Path) -> None:
    """The paths a broker-level test cannot reach: the delivery limit and the worker's own failure."""
    with EdgeEmulator(EmulatorConfig(port=0, latency_s=0.01, capacity=4)) as emulator:
        client = HttpEdgeClient(base_url=emulator.url, request_timeout_s=10, max_attempts=2)
        gate = EdgeGate(client)
        journal = Journal(tmp_path / "journal.sqlite3", retention_s=600)
        metrics = Metrics()
        runner = JobRunner(
            edge=client, gate=gate, journal=journal, settings=job_settings(upload="embedded"), metrics=metrics
        )
        rig = Rig(runner, journal, client, emulator)
        try:
            with structlog.testing.capture_logs() as logs:
                limited = rig.deliver("limit", b"x", delivery_count=5)  # over delivery_limit 3
                journal.close()  # the next delivery fails in the worker itself: the journal is gone
                broken = rig.deliver("broken", b"y")
            assert limited.status == "ERROR" and limited.dead_letter is not None
            assert limited.dead_letter.code == "DELIVERY_LIMIT"
            assert broken.status == "REQUEUED" and broken.requeue
            assert [(line["message_id"], line["status"]) for line in finished_lines(logs)] == [
                ("limit", "ERROR"),
                ("broken", "REQUEUED"),
            ]
            assert metrics.registry.get_sample_value("edge_worker_jobs_in_progress") == 0
            assert metrics.registry.get_sample_value("edge_worker_requests_received_total") == 2
        finally:
            runner.stop()
            gate.stop()
            journal.close()


def test_a_chunk_an_older_gateway_refuses_ends_edge_rejected_naming_the_open_job(tmp_path: Path) -> None:
    """Issue 9: the open job existed (and was cancelled), so the error reply carries its job_identifier."""
    with EdgeEmulator(EmulatorConfig(port=0, latency_s=0.0, capacity=4, gateway="v2.0")) as emulator:
        client = HttpEdgeClient(base_url=emulator.url, request_timeout_s=10, max_attempts=2, chunk_encoding="json")
        gate = EdgeGate(client)
        runner = JobRunner(
            edge=client, gate=gate, journal=None, settings=job_settings(upload="chunked"), metrics=Metrics()
        )
        try:
            props = pika.BasicProperties(message_id="chunked", content_type="application/msgpack")
            body = msgpack.packb({"model": SHA_MODEL, "sources": {"s": {"i": b"chunk me"}}}, use_bin_type=True)
            outcome = runner.handle(body, props, route_from_properties(props))
            assert outcome.reply is not None
            reply = msgpack.unpackb(outcome.reply, raw=False)
            assert reply["status"] == "ERROR" and reply["error"]["code"] == "EDGE_REJECTED", reply
            jobs = emulator.stats()["jobs"]
            assert len(jobs) == 1
            assert reply["job_identifier"] == jobs[0]["id"]
        finally:
            runner.stop()
            gate.stop()


def test_a_reply_over_max_message_bytes_is_journaled_as_reply_too_large(tmp_path: Path) -> None:
    with EdgeEmulator(EmulatorConfig(port=0, latency_s=0.0, capacity=4)) as emulator:
        client = HttpEdgeClient(base_url=emulator.url, request_timeout_s=10, max_attempts=2)
        gate = EdgeGate(client)
        journal = Journal(tmp_path / "journal.sqlite3", retention_s=600)
        settings = replace(job_settings(upload="embedded"), max_message_bytes=4096)
        runner = JobRunner(edge=client, gate=gate, journal=journal, settings=settings, metrics=Metrics())
        try:
            props = pika.BasicProperties(message_id="big", content_type="application/msgpack")
            sources = {f"s{n}": {"i": b"%d" % n} for n in range(40)}
            body = msgpack.packb({"model": SHA_MODEL, "sources": sources}, use_bin_type=True)
            outcome = runner.handle(body, props, route_from_properties(props))
            assert outcome.status == "ERROR" and outcome.reply is not None and len(outcome.reply) <= 4096
            entry = journal.get("big")
            assert entry is not None and entry.reply == outcome.reply  # the fallback is what a replay sends
            reply = msgpack.unpackb(outcome.reply, raw=False)
            assert reply["error"]["code"] == "REPLY_TOO_LARGE" and reply["completed"] == 40
        finally:
            runner.stop()
            gate.stop()
            journal.close()
