"""The producer API (`worker.client`, contract §8) against the real broker, a worker process and the emulator."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import msgpack
import pika
import pika.exceptions
import pytest

from tests.conftest import Queues, wait_until
from worker.client import (
    BrokerUnreachable,
    EdgeError,
    EdgeWorkerClient,
    Job,
    JobError,
    JobFailed,
    JobRejected,
    JobTimeout,
    ReplyTimeout,
    RequestUnroutable,
    UnknownJob,
)
from worker.emulator import EdgeEmulator


def sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


@pytest.fixture
def client(broker_url: str, queues: Queues) -> Iterator[EdgeWorkerClient]:
    with EdgeWorkerClient(broker_url, queue=queues.queue) as c:
        yield c


@pytest.fixture
def running(emulator: EdgeEmulator, worker_factory: Any) -> EdgeEmulator:
    """A worker process on this test's queues, in front of the emulator."""
    worker_factory(emulator.url).start()
    return emulator


@pytest.fixture
def parked(broker_url: str, queues: Queues) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    """The request queue exists but no worker consumes it; the channel can fake replies."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    channel = connection.channel()
    channel.queue_declare(queues.queue, durable=True)
    yield channel
    connection.close()


def fake_reply(channel: Any, client: EdgeWorkerClient, job: Job, *, reply_id: str, **body: Any) -> None:
    reply = {"status": "COMPLETE", "final": True, "correlation_id": job.correlation_id, **body}
    props = pika.BasicProperties(correlation_id=job.correlation_id, message_id=reply_id)
    channel.basic_publish("", client.reply_queue, msgpack.packb(reply, use_bin_type=True), props)


def test_submit_returns_a_submitted_job_and_block_until_complete_the_final_one(
    running: EdgeEmulator, client: EdgeWorkerClient
) -> None:
    image, other = b"\x00\x01" * 100, b"\xff" * 7
    job = client.jobs.submit_embedded(
        "sha256", "1.0.0", {"cam-1": {"image": image}, "cam-2": {"image": other}}, True, request_id="c-1"
    )
    assert (job.status, job.final, job.job_identifier) == ("SUBMITTED", False, None)
    assert job.correlation_id == job.message_id and len(job.message_id) == 32
    assert (job.job_inputs, job.total, job.pending, job.request_id) == (("cam-1", "cam-2"), 2, 2, "c-1")

    final = client.jobs.block_until_complete(job, timeout=20)
    assert (final.status, final.final, final.request_id, final.explain) == ("COMPLETE", True, "c-1", True)
    assert final.message_id == job.message_id and final.job_identifier
    assert (final.total, final.completed, final.failed) == (2, 2, 0)
    assert final.raise_for_error() is final
    results = client.results.get_results(final)
    assert results["cam-1"]["inputs"]["image"]["sha256"] == sha(image)
    assert results["cam-2"]["inputs"]["image"]["sha256"] == sha(other)
    assert client.results.get_results(job) == results  # the submitted job finds its final reply too
    assert client.jobs.get_results(final) == results  # where the SDK has it
    # Immutable: neither the job nor what it holds can be changed.
    with pytest.raises(dataclasses.FrozenInstanceError):
        final.status = "FAILED"  # type: ignore[misc]
    with pytest.raises(TypeError):
        final.results["cam-1"]["inputs"] = {}  # type: ignore[index]
    assert client.jobs.block_until_complete(final) is final


def test_text_jobs_and_the_one_level_shorthand(running: EdgeEmulator, client: EdgeWorkerClient) -> None:
    text = client.jobs.submit_text("sha256", "1.0.0", {"doc": {"t": "snow ☃"}})
    short = client.jobs.submit_embedded("sha256", "1.0.0", {"image": b"\x07\x08"})
    as_str = client.jobs.submit_embedded("sha256", "1.0.0", {"s": {"i": "plain"}})  # embedded: sent as UTF-8
    assert short.job_inputs == ("job",)
    finals = {j.correlation_id: j for j in client.jobs.as_completed([text, short, as_str], timeout=20)}
    assert client.results.get_results(finals[text.correlation_id])["doc"]["inputs"]["t"]["sha256"] == sha("snow ☃")
    assert client.results.get_results(finals[short.correlation_id])["job"]["inputs"]["image"]["sha256"] == sha(
        b"\x07\x08"
    )
    assert client.results.get_results(finals[as_str.correlation_id])["s"]["inputs"]["i"]["sha256"] == sha("plain")
    types = Counter(job["input_type"] for job in running.stats()["jobs"])
    assert types == {"text": 1, "embedded": 2}
    with pytest.raises(TypeError, match=r"sources\['doc'\]\['t'\]: submit_text takes str, got bytes"):
        client.jobs.submit_text("sha256", "1.0.0", {"doc": {"t": b"x"}})


def test_updates_give_the_job_identifier_before_the_final_reply(
    running: EdgeEmulator, client: EdgeWorkerClient
) -> None:
    job = client.jobs.submit_text("sleep", "1.0.0", {"job": {"seconds": "0.5"}}, updates=True)
    seen = wait_until(lambda: client.jobs.get_job_details(job).job_identifier, 10, what="an updates reply")
    assert client.jobs.get_job_details(job).final is False
    final = client.jobs.block_until_complete(job, timeout=10)
    assert final.job_identifier == seen and final.status == "COMPLETE"


def test_many_requests_in_flight_from_four_threads(running: EdgeEmulator, client: EdgeWorkerClient) -> None:
    per_thread, threads = 40, 4
    submitted: dict[str, bytes] = {}
    finals: list[Job] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def produce(n: int) -> None:
        try:
            mine = []
            for i in range(per_thread):
                data = f"thread {n} request {i} {uuid.uuid4()}".encode()
                job = client.jobs.submit_embedded("sha256", "1.0.0", {"x": {"data": data}})
                with lock:
                    submitted[job.correlation_id] = data
                mine.append(job)
            got = list(client.jobs.as_completed(mine, timeout=60))
            with lock:
                finals.extend(got)
        except Exception as exc:  # noqa: BLE001 -- handed to the main thread, which fails the test
            errors.append(exc)

    workers = [threading.Thread(target=produce, args=(n,)) for n in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(90)
    assert not errors, errors
    assert len(finals) == per_thread * threads
    assert Counter(f.correlation_id for f in finals) == Counter(set(submitted))  # each exactly once
    for final in finals:
        assert final.status == "COMPLETE"
        assert final.results["x"]["inputs"]["data"]["sha256"] == sha(submitted[final.correlation_id])
    assert client.stats()["delivered"] == per_thread * threads


def test_raise_for_error_names_the_code(running: EdgeEmulator, client: EdgeWorkerClient) -> None:
    missing = client.jobs.submit_embedded("no-such-model", "9.9.9", {"x": {"d": b"1"}})
    invalid = client.jobs.submit_embedded("sha256", "1.0.0", {"a/b": {"d": b"1"}})  # '/' is not allowed
    slow = client.jobs.submit_text("sleep", "1.0.0", {"job": {"seconds": "5"}}, timeout=0.5)
    failing = client.jobs.submit_text("sha256", "1.0.0", {"doc": {"t": "FAIL on purpose"}})
    finals = {j.correlation_id: j for j in client.jobs.as_completed([missing, invalid, slow, failing], timeout=30)}

    with pytest.raises(EdgeError) as edge:
        finals[missing.correlation_id].raise_for_error()
    assert (edge.value.code, edge.value.retryable) == ("MODEL_NOT_FOUND", False)
    assert "no-such-model" in edge.value.message and edge.value.job.status == "ERROR"

    with pytest.raises(JobRejected) as rejected:
        finals[invalid.correlation_id].raise_for_error()
    assert rejected.value.code == "INVALID_REQUEST"
    assert "a/b" in rejected.value.message
    assert finals[invalid.correlation_id].job_identifier is None  # never reached the edge

    with pytest.raises(JobTimeout) as timed_out:
        finals[slow.correlation_id].raise_for_error()
    assert timed_out.value.code == "TIMEOUT"

    with pytest.raises(JobFailed) as failed:
        finals[failing.correlation_id].raise_for_error()
    assert failed.value.code == "JOB_FAILED"
    assert "doc" in finals[failing.correlation_id].failures


def test_a_retry_with_the_same_message_id_is_one_edge_job(running: EdgeEmulator, client: EdgeWorkerClient) -> None:
    first = client.jobs.block_until_complete(client.jobs.submit_embedded("sha256", "1.0.0", {"x": b"once"}))
    again = client.jobs.submit_embedded("sha256", "1.0.0", {"x": b"once"}, message_id=first.message_id)
    assert again.message_id == first.message_id
    final = client.jobs.block_until_complete(again, timeout=10)
    assert final.job_identifier == first.job_identifier
    assert len(running.stats()["jobs"]) == 1


def test_waits_time_out_without_a_reply(parked: Any, client: EdgeWorkerClient) -> None:
    job = client.jobs.submit_embedded("sha256", "1.0.0", {"x": b"1"})
    with pytest.raises(ReplyTimeout, match=job.correlation_id):
        client.jobs.block_until_complete(job, timeout=0.2)
    with pytest.raises(ReplyTimeout, match="1 of 1 jobs"):
        list(client.jobs.as_completed([job], timeout=0.2))
    with pytest.raises(Exception, match="no final reply yet"):
        client.results.get_results(job)


def test_a_final_reply_seen_twice_is_delivered_once(parked: Any, client: EdgeWorkerClient) -> None:
    job = client.jobs.submit_embedded("sha256", "1.0.0", {"x": b"1"})
    fake_reply(parked, client, job, reply_id="r-1", job_identifier="first")
    fake_reply(parked, client, job, reply_id="r-1", job_identifier="same message id")
    fake_reply(parked, client, job, reply_id="r-2", job_identifier="second final")
    wait_until(lambda: client.stats()["received"] == 3, 10, what="three replies")
    assert [j.job_identifier for j in client.jobs.as_completed([job, job], timeout=5)] == ["first"]
    assert client.jobs.block_until_complete(job).job_identifier == "first"
    stats = client.stats()
    assert (stats["delivered"], stats["dropped_duplicate"]) == (1, 2)


def test_replies_nobody_waits_for_do_not_accumulate(broker_url: str, queues: Queues, parked: Any) -> None:
    with EdgeWorkerClient(broker_url, queue=queues.queue, max_unclaimed=5) as client:
        kept = [client.jobs.submit_embedded("sha256", "1.0.0", {"x": b"1"}) for _ in range(8)]
        dropped = client.jobs.submit_embedded("sha256", "1.0.0", {"x": b"2"})
        dropped_id = dropped.correlation_id
        del dropped
        gc.collect()
        assert client.stats()["tracked"] == 8  # forgotten with its Job
        stranger = Job(status="SUBMITTED", final=False, message_id="stranger", correlation_id="stranger")
        for n, job in enumerate([*kept, stranger]):
            fake_reply(parked, client, job, reply_id=f"r-{n}")
        props = pika.BasicProperties(correlation_id=dropped_id, message_id="r-late")
        parked.basic_publish("", client.reply_queue, msgpack.packb({"status": "COMPLETE", "final": True}), props)
        wait_until(lambda: client.stats()["received"] == 10, 10, what="ten replies")
        stats = client.stats()
        assert (stats["dropped_unknown"], stats["evicted"], stats["unclaimed"], stats["tracked"]) == (2, 3, 5, 5)
        with pytest.raises(UnknownJob, match="5 unclaimed"):
            client.jobs.block_until_complete(kept[0], timeout=1)
        assert client.jobs.block_until_complete(kept[-1], timeout=1).status == "COMPLETE"
        assert client.stats()["unclaimed"] == 4


def test_a_missing_request_queue_raises_naming_it_and_keeps_the_body_out_of_logs(
    client: EdgeWorkerClient, queues: Queues, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(RequestUnroutable) as info:
        client.jobs.submit_embedded("m", "1", {"a": {"b": b"PAYLOAD-CANARY-88"}})
    assert f"no queue {queues.queue!r}" in str(info.value)
    out = capsys.readouterr()
    assert "PAYLOAD-CANARY-88" not in caplog.text + out.out + out.err
    assert client.stats()["tracked"] == 0


def test_an_unreachable_broker_raises_at_once_without_the_password() -> None:
    with pytest.raises(BrokerUnreachable) as info:
        EdgeWorkerClient(["amqp://guest:secret-pw@127.0.0.1:1/%2F", "amqp://guest:secret-pw@127.0.0.1:2/%2F"])
    message = str(info.value)
    assert "127.0.0.1:1" in message and "127.0.0.1:2" in message
    assert "secret-pw" not in message


def test_the_reply_queue_outlives_the_connection_until_close_deletes_it(
    broker_url: str, queues: Queues, client: EdgeWorkerClient
) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        # Another connection may see it: not exclusive (an exclusive queue answers 405 RESOURCE_LOCKED).
        assert connection.channel().queue_declare(client.reply_queue, passive=True).method.consumer_count == 1
        name = client.reply_queue
        client.close()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as gone:
            connection.channel().queue_declare(name, passive=True)
        assert gone.value.reply_code == 404
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        ("REJECTED", "INVALID_REQUEST", JobRejected),
        ("REJECTED", "PAYLOAD_TOO_LARGE", JobRejected),
        ("TIMEOUT", "TIMEOUT", JobTimeout),
        ("FAILED", "JOB_FAILED", JobFailed),
        ("ERROR", "MODEL_NOT_FOUND", EdgeError),
        ("ERROR", "REPLY_TOO_LARGE", EdgeError),
        ("CANCELED", "JOB_CANCELED", EdgeError),
        ("ERROR", "EDGE_UNAVAILABLE", EdgeError),
    ],
)
def test_raise_for_error_maps_every_final_error_status(status: str, code: str, kind: type[JobError]) -> None:
    reply = {"status": status, "final": True, "error": {"code": code, "message": "why", "retryable": True}}
    job = Job.from_reply(reply, message_id="m", correlation_id="c")
    with pytest.raises(kind) as info:
        job.raise_for_error()
    assert (info.value.code, info.value.message, info.value.retryable, info.value.job) == (code, "why", True, job)
    # Not final yet, or complete: nothing to raise.
    assert Job.from_reply({**reply, "final": False}, message_id="m", correlation_id="c").raise_for_error()
    complete = Job.from_reply({"status": "COMPLETE", "final": True}, message_id="m", correlation_id="c")
    assert complete.raise_for_error() is complete


def test_a_deleted_reply_queue_is_replaced_and_new_replies_arrive(
    running: EdgeEmulator, broker_url: str, client: EdgeWorkerClient
) -> None:
    old = client.reply_queue
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        connection.channel().queue_delete(old)  # the broker cancels the client's consumer
    finally:
        connection.close()
    wait_until(lambda: client.stats()["reply_queues_lost"] == 1 and client.reply_queue != old, 20, what="a new queue")
    final = client.jobs.block_until_complete(client.jobs.submit_embedded("sha256", "1.0.0", {"x": b"after"}), 20)
    assert final.status == "COMPLETE"
    assert final.results["job"]["inputs"]["x"]["sha256"] == sha(b"after")
