"""One edge job per request across kill -9: a lost submission's job is found in the edge's job list and adopted.

The crash is reproduced exactly as the journal sees it: a "dead" process (an earlier Journal of this pid, with
its own token) counted the delivery and set the submitting mark; the edge (the real emulator, over HTTP)
holds whatever jobs the test made; a new Journal opens (as the next process does) and the redelivery runs.
The whole-process version, with real kill -9, is tests/test_faults.py::test_kill_9_at_random_moments_loses_nothing.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pika
import pytest
import structlog

from worker.edge import EdgeClient, HttpEdgeClient
from worker.emulator import EdgeEmulator, EmulatorConfig
from worker.jobs import EdgeGate, JobRunner, JobSettings, adopt
from worker.jobs.adopt import SubmitWindows
from worker.journal import Journal
from worker.messages import route_from_properties
from worker.metrics import Metrics

SHA = {"identifier": "sha256", "version": "1.0.0"}
SOURCES = {"cam": {"image": b"frame"}}


def settings() -> JobSettings:
    return JobSettings(
        job_timeout_s=30,
        max_timeout_s=60,
        max_request_bytes=1 << 20,
        delivery_limit=5,
        count_deliveries_in_journal=False,
        max_resubmits=1,
        upload="embedded",
        embed_limit=1 << 20,
    )


@dataclass
class Edge:
    emulator: EdgeEmulator
    client: EdgeClient
    path: Path

    def submit(self, sources: dict[str, dict[str, bytes]] = SOURCES, model: dict[str, str] = SHA) -> str:
        job = self.client.submit_job(
            model_id=model["identifier"],
            version=model["version"],
            sources=sources,
            input_type="embedded",
            explain=False,
        )
        return job.job_identifier

    def dead_process(self, key: str, *, submitting: bool = True, job_id: str | None = None) -> None:
        """What a process killed in the submit window leaves: the delivery counted, running, submitting."""
        dead = Journal(self.path, retention_s=600)
        try:
            dead.record_delivery(key, mark_running_below=2)
            if job_id is not None:
                dead.record_job(key, job_id)
            if submitting:
                dead.record_submitting(key)
        finally:
            dead.close()  # no release_all: the process "died" with the mark set

    def redeliver(self, key: str, sources: dict[str, dict[str, bytes]] = SOURCES) -> tuple[dict[str, Any], list[Any]]:
        """The next process: a new journal, and the redelivery of `key`; its reply and log lines."""
        journal = Journal(self.path, retention_s=600)
        gate = EdgeGate(self.client)
        runner = JobRunner(edge=self.client, gate=gate, journal=journal, settings=settings(), metrics=Metrics())
        props = pika.BasicProperties(
            message_id=key, correlation_id=key, content_type="application/msgpack", headers={"x-delivery-count": 1}
        )
        body = msgpack.packb({"model": SHA, "sources": sources}, use_bin_type=True)
        try:
            with structlog.testing.capture_logs() as logs:
                outcome = runner.handle(body, props, route_from_properties(props))
        finally:
            runner.stop()
            gate.stop()
            journal.close()
        assert outcome.reply is not None
        return msgpack.unpackb(outcome.reply, raw=False), logs

    def jobs(self) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = self.emulator.stats()["jobs"]
        return jobs


@pytest.fixture(params=["http", "grpc"])
def edge(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Edge]:
    """The emulator, and the worker's client over one transport (the search uses GET /api/jobs or GetJobs)."""
    models = ("sha256:1.0.0", "sha256:2.0.0", "sleep:1.0.0")
    config = EmulatorConfig(port=0, grpc_port=0, latency_s=0.01, capacity=4, models=models)
    with EdgeEmulator(config) as emulator:
        client: EdgeClient
        if request.param == "grpc":
            from worker.edge.grpc import GrpcEdgeClient

            assert emulator.grpc_target is not None
            client = GrpcEdgeClient(target=emulator.grpc_target, request_timeout_s=10, max_attempts=2)
        else:
            client = HttpEdgeClient(base_url=emulator.url, request_timeout_s=10, max_attempts=2)
        try:
            yield Edge(emulator, client, tmp_path / "j")
        finally:
            client.close()


def events(logs: list[Any], name: str) -> list[Any]:
    return [line for line in logs if line["event"] == name]


def test_the_one_job_a_dead_process_submitted_is_adopted_not_submitted_again(edge: Edge) -> None:
    edge.dead_process("k")
    lost = edge.submit()  # the edge accepted it; the receipt died with the process
    reply, logs = edge.redeliver("k")
    assert reply["status"] == "COMPLETE" and reply["job_identifier"] == lost
    assert [job["id"] for job in edge.jobs()] == [lost]  # one edge job for the request
    adopted = events(logs, "edge_job_adopted")
    assert len(adopted) == 1 and adopted[0]["job_identifier"] == lost
    assert not events(logs, "edge_job_maybe_duplicated")


def test_a_submission_that_never_reached_the_edge_is_submitted(edge: Edge) -> None:
    edge.dead_process("k")
    reply, logs = edge.redeliver("k")
    assert reply["status"] == "COMPLETE"
    assert [job["id"] for job in edge.jobs()] == [reply["job_identifier"]]
    warned = events(logs, "edge_job_maybe_duplicated")
    assert len(warned) == 1 and warned[0]["candidates"] == 0
    assert not events(logs, "edge_job_adopted")


def test_two_jobs_that_could_be_the_lost_one_are_ambiguous_and_neither_is_adopted(edge: Edge) -> None:
    edge.dead_process("k")
    first, second = edge.submit(), edge.submit()
    reply, logs = edge.redeliver("k")
    assert reply["status"] == "COMPLETE" and reply["job_identifier"] not in {first, second}
    assert len(edge.jobs()) == 3
    warned = events(logs, "edge_job_maybe_duplicated")
    assert len(warned) == 1 and warned[0]["candidates"] == 2


@pytest.mark.parametrize(
    "other",
    [
        pytest.param({"sources": {"other-camera": {"image": b"frame"}}}, id="other-source-names"),
        pytest.param({"sources": {"cam": {"image": b"frame"}, "cam2": {"image": b"x"}}}, id="more-sources"),
        pytest.param({"model": {"identifier": "sha256", "version": "2.0.0"}}, id="other-version"),
        pytest.param(
            {"model": {"identifier": "sleep", "version": "1.0.0"}, "sources": {"cam": {"seconds": b"0"}}},
            id="other-model",
        ),
    ],
)
def test_a_job_of_another_shape_is_not_adopted(edge: Edge, other: dict[str, Any]) -> None:
    edge.dead_process("k")
    foreign = edge.submit(**other)
    reply, logs = edge.redeliver("k")
    assert reply["status"] == "COMPLETE" and reply["job_identifier"] != foreign
    assert not events(logs, "edge_job_adopted")


def test_a_job_created_before_the_submitting_mark_is_not_adopted(edge: Edge) -> None:
    earlier = edge.submit()  # e.g. an identical request without an id, finished and forgotten
    edge.dead_process("k")
    reply, logs = edge.redeliver("k")
    assert reply["job_identifier"] != earlier
    assert not events(logs, "edge_job_adopted")


def test_a_job_another_journal_entry_names_is_not_adopted(edge: Edge) -> None:
    edge.dead_process("k")
    claimed = edge.submit()
    owner = Journal(edge.path, retention_s=600)
    try:
        owner.record_delivery("other-request")
        owner.record_job("other-request", claimed)
    finally:
        owner.close()
    reply, logs = edge.redeliver("k")
    assert reply["job_identifier"] != claimed
    assert not events(logs, "edge_job_adopted")
    assert events(logs, "edge_job_maybe_duplicated")[0]["candidates"] == 0


def test_a_job_created_after_the_next_process_opened_the_journal_is_not_adopted(edge: Edge) -> None:
    edge.dead_process("k")
    Journal(edge.path, retention_s=600).close()  # a later process opened the journal (and died, say)
    later = edge.submit()  # a job that process (not the dead one) made
    reply, logs = edge.redeliver("k")
    assert reply["job_identifier"] != later
    assert not events(logs, "edge_job_adopted")


def test_same_shape_submission_windows_never_overlap_and_start_in_a_later_millisecond() -> None:
    """The rule adoption rests on: one unanswered same-shape submission at a time, marks a ms apart."""
    windows = SubmitWindows()
    shape = ("sha256", "1.0.0", ("cam",))
    inside = 0
    most = 0
    spans: list[tuple[int, int]] = []
    lock = threading.Lock()

    def submit() -> None:
        nonlocal inside, most
        for _ in range(20):
            with windows.window(shape) as _hold:
                start = time.time()
                with lock:
                    inside += 1
                    most = max(most, inside)
                with lock:
                    inside -= 1
                spans.append((int(start * 1000), int(time.time() * 1000)))

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 1
    spans.sort()
    assert len(spans) == 80
    assert all(later[0] > earlier[1] for earlier, later in itertools.pairwise(spans)), spans


def test_a_clean_hold_lets_the_next_mark_follow_in_the_same_millisecond() -> None:
    """Only a hold that may have left a job no entry names pushes the next mark into a later millisecond."""
    windows = SubmitWindows()
    shape = ("sha256", "1.0.0", ("cam",))
    with windows.window(shape) as hold:
        pass  # not marked clean: as a retried, failed or id-less submission
    released = windows._shapes[shape].released_ms
    with windows.window(shape) as hold:
        assert int(time.time() * 1000) > released
        hold.clean = True
    starts = []
    for _ in range(50):  # clean holds back to back: no millisecond waits between them
        with windows.window(shape) as hold:
            starts.append(time.perf_counter())
            hold.clean = True
    assert starts[-1] - starts[0] < 0.02, f"50 clean holds took {starts[-1] - starts[0]:.4f} s"


def test_more_unclaimed_jobs_in_the_window_than_the_search_reads_are_not_searched(
    edge: Edge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edge that ignores the time filter lists every job of the model: too many to read, none adopted."""
    monkeypatch.setattr(adopt, "MAX_DETAILS", 1)
    edge.dead_process("k")
    edge.submit()
    edge.submit()
    reply, logs = edge.redeliver("k")
    assert reply["status"] == "COMPLETE"
    warned = events(logs, "edge_job_maybe_duplicated")
    assert len(warned) == 1 and warned[0]["candidates"] is None and "too many" in warned[0]["reason"]
