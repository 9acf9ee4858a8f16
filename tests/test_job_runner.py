"""JobRunner without a broker: deliveries handed in directly, a real emulator over HTTP, a real journal.

What the broker-level tests cannot see from outside: the running marks the journal is left with, and that
the first-look share learns from jobs submitted here and from nothing else.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pika
import pytest

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
def rig(tmp_path: Path) -> Iterator[Rig]:
    with EdgeEmulator(EmulatorConfig(port=0, latency_s=0.02, capacity=4)) as emulator:
        client = HttpEdgeClient(base_url=emulator.url, request_timeout_s=10, max_attempts=2)
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


def test_a_finished_job_leaves_its_reply_and_no_running_mark(rig: Rig) -> None:
    outcome = rig.deliver("m1", b"one")
    assert outcome.status == "COMPLETE" and outcome.journaled
    assert rig.row("m1") == (None, 1, 1)  # the reply's own commit took the mark off
    replay = rig.deliver("m1", b"one")
    assert replay.status == "REPLAYED" and replay.reply == outcome.reply
    assert rig.row("m1") == (None, 1, 1)  # a replay marks nothing


def test_the_first_look_share_learns_from_jobs_submitted_here_only(rig: Rig) -> None:
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


def test_a_request_over_its_delivery_limit_leaves_a_live_workers_mark_alone(rig: Rig) -> None:
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
    finally:
        other.close()


class _SmallEdge(HttpEdgeClient):
    """The real client to the real emulator, reporting the smaller limits of another edge's features."""

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
