"""Issue 10, the job side, end to end: the real broker, the emulator over sockets, `python -m worker run`.

- Replies that do not fit: a final reply over amqp.max_message_bytes is ERROR/REPLY_TOO_LARGE (no results,
  both sizes named), journaled as such; the requests beside it complete.
- Replies only where allowed: a reply_to outside amqp.reply_to_pattern gets REJECTED/REPLY_TO_FORBIDDEN on
  amqp.reply_queue and its request lands in the dead-letter queue; the forbidden queue gets nothing.
- No false delivery limits: identical requests without ids in flight at once on a classic queue are not
  redeliveries of each other.
- Every exit path counts: one job_finished line per delivery the job runner handled, and the in-progress
  gauge back at 0.
"""

# ruff: noqa: PLR0917

from __future__ import annotations

import re
import signal
import urllib.request
from typing import Any

import msgpack
import pika
import pytest

from tests.conftest import Producer, Queues, ReplyCollector, WorkerProcess, wait_until
from worker.config import load_config
from worker.errors import ConfigError
from worker.jobs.replies import too_large_encoded, too_large_reply

SHA = {"identifier": "sha256", "version": "1.0.0"}
SLEEP = {"identifier": "sleep", "version": "1.0.0"}


def dead_letters(producer: Producer) -> list[tuple[Any, bytes]]:
    return producer.drain(producer.queues.dead_letter_queue)


def test_a_reply_over_max_message_bytes_is_reply_too_large_and_the_requests_beside_it_complete(
    emulator: Any, worker_factory: Any, producer: Producer, collector: ReplyCollector
) -> None:
    worker = worker_factory(emulator.url, amqp__max_message_bytes=4096).start()
    # 40 sources: the emulator's results name each source's inputs and their digests, about 300 bytes each.
    big = producer.publish({"model": SHA, "sources": {f"cam-{n:02d}": {"image": b"%d" % n} for n in range(40)}})
    beside = [producer.publish({"model": SHA, "sources": {"cam": {"image": b"small %d" % n}}}) for n in range(6)]
    finals = collector.wait_finals(7)
    assert all(finals[m][0]["status"] == "COMPLETE" and finals[m][0]["results"] for m in beside)
    reply = finals[big][0]
    assert reply["status"] == "ERROR" and reply["final"] is True
    assert reply["error"]["code"] == "REPLY_TOO_LARGE" and reply["error"]["retryable"] is False
    sizes = [int(n) for n in re.findall(r"(\d+) bytes", reply["error"]["message"])]
    assert len(sizes) == 2 and sizes[0] > 4096 and sizes[1] == 4096, reply["error"]["message"]
    assert "results" not in reply and "failures" not in reply
    assert reply["job_identifier"] and reply["total"] == 40 and reply["completed"] == 40
    assert len(msgpack.packb(reply, use_bin_type=True)) <= 4096
    assert dead_letters(producer) == []
    # The journal holds the fallback: a redelivery of the same request replays it, no second edge job.
    jobs = emulator.stats()["jobs_submitted"]
    again = producer.publish({"model": SHA, "sources": {"x": {"i": b"x"}}}, message_id=big)
    wait_until(lambda: collector.poll() and len(collector.finals().get(again, [])) == 2, 15, what="the replay")
    assert collector.finals()[big][1]["error"]["code"] == "REPLY_TOO_LARGE"
    assert emulator.stats()["jobs_submitted"] == jobs
    too_large = worker.events("reply_too_large")
    assert len(too_large) == 1 and too_large[0]["limit_bytes"] == 4096


def test_a_reply_to_outside_the_pattern_is_refused_to_the_reply_queue_and_dead_lettered(
    emulator: Any, worker_factory: Any, producer: Producer, collector: ReplyCollector, queues: Queues, broker_url: str
) -> None:
    forbidden = f"{queues.prefix}.someone-elses"
    queues.extra.append(forbidden)
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    connection.channel().queue_declare(forbidden, durable=True)
    connection.close()
    pattern = re.escape(queues.reply_queue) + r"|amq\.gen-.*"
    worker = worker_factory(emulator.url, amqp__reply_to_pattern=pattern).start()
    request = {"model": SHA, "sources": {"cam": {"image": b"frame"}}, "request_id": "r-1"}
    refused = producer.publish(request, reply_to=forbidden, correlation_id="refused")
    # A prefix of an allowed name is not a full match: refused too.
    prefix = producer.publish(request, reply_to=queues.reply_queue + ".x", correlation_id="prefix")
    allowed = producer.publish(request, correlation_id="allowed")
    finals = collector.wait_finals(3)
    assert finals["allowed"][0]["status"] == "COMPLETE"
    for cid in ("refused", "prefix"):
        reply = finals[cid][0]
        assert reply["status"] == "REJECTED" and reply["error"]["code"] == "REPLY_TO_FORBIDDEN", reply
        assert reply["request_id"] == "r-1" and reply["job_identifier"] is None
        assert "reply_to_pattern" in reply["error"]["message"]
    assert producer.drain(forbidden) == []
    wait_until(lambda: producer.message_count(queues.dead_letter_queue) == 2, 10, what="two dead letters")
    dead = {props.message_id: (props, body) for props, body in dead_letters(producer)}
    assert set(dead) == {refused, prefix}
    for props, body in dead.values():
        assert props.headers["x-error-code"] == "REPLY_TO_FORBIDDEN"
        assert msgpack.unpackb(body, raw=False) == request  # unchanged
    assert allowed not in dead
    assert emulator.stats()["jobs_submitted"] == 1  # refused before anything reached the edge
    assert len(worker.events("job_finished")) == 3


@pytest.mark.parametrize(
    ("pattern", "fails"),
    [("edge\\.replies|amq\\.gen-.*", False), ("", False), ("edge.(replies", True), ("*", True)],
)
def test_reply_to_pattern_is_checked_when_the_configuration_loads(pattern: str, fails: bool) -> None:
    environ = {"EDGE_WORKER_AMQP__REPLY_TO_PATTERN": pattern}
    if fails:
        with pytest.raises(ConfigError, match=r"amqp\.reply_to_pattern"):
            load_config(None, environ)
    else:
        assert load_config(None, environ).amqp.reply_to_pattern == pattern


@pytest.mark.parametrize(("value", "fails"), [("16777216", False), ("4096", False), ("4095", True), ("0", True)])
def test_max_message_bytes_is_checked_when_the_configuration_loads(value: str, fails: bool) -> None:
    environ = {"EDGE_WORKER_AMQP__MAX_MESSAGE_BYTES": value}
    if fails:
        with pytest.raises(ConfigError, match=r"amqp\.max_message_bytes"):
            load_config(None, environ)
    else:
        assert load_config(None, environ).amqp.max_message_bytes == int(value)


def test_identical_requests_without_ids_in_flight_at_once_are_not_redeliveries_of_each_other(
    emulator: Any, worker_factory: Any, producer: Producer, collector: ReplyCollector
) -> None:
    worker = worker_factory(emulator.url, amqp__queue_type="classic", amqp__delivery_limit=2).start()
    request = {"model": SLEEP, "sources": {"job": {"seconds": "0.3"}}}
    for n in range(10):
        producer.publish(request, message_id="", correlation_id=f"c{n}")
    finals = collector.wait_finals(10, timeout_s=30)
    assert {cid: [r["status"] for r in replies] for cid, replies in finals.items()} == {
        f"c{n}": ["COMPLETE"] for n in range(10)
    }
    assert dead_letters(producer) == []
    # They really were in flight together (eight at once: worker.concurrency), the case that counted wrong.
    assert emulator.stats()["peak_running"] >= 2
    assert [line["status"] for line in worker.events("job_finished")] == ["COMPLETE"] * 10


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_every_exit_path_ends_with_one_job_finished_and_the_gauge_at_zero(
    emulator: Any, worker_factory: Any, producer: Producer, collector: ReplyCollector, queues: Queues
) -> None:
    """Defined: each delivery the job runner handles (each edge_worker_requests_received) ends with exactly one
    job_finished line and one edge_worker_jobs_finished, whatever its path, and the gauge comes back to 0.
    A redelivery attached to a run still in flight is answered by that run's one job_finished.
    """
    worker: WorkerProcess = worker_factory(
        emulator.url,
        metrics__listen="127.0.0.1:0",
        amqp__reply_to_pattern=re.escape(queues.reply_queue),
        amqp__max_message_bytes=4096,
        worker__drain_timeout=1,
    ).start()
    port = int(worker.wait_for_event("metrics_listening")[0]["address"].rsplit(":", 1)[1])
    expect = {
        producer.publish({"model": SHA, "sources": {"cam": {"image": b"ok"}}}): "COMPLETE",
        producer.publish(None, raw=b"\xc1 not msgpack"): "REJECTED",
        producer.publish({"model": {"identifier": "nope", "version": "1"}, "sources": {"s": {"i": b"x"}}}): "ERROR",
        producer.publish({"model": SLEEP, "sources": {"job": {"seconds": "5"}}, "timeout": 0.3}): "TIMEOUT",
        producer.publish(
            {"model": SHA, "sources": {"cam": {"image": b"x"}}}, reply_to=queues.reply_queue + ".no"
        ): "REJECTED",
        producer.publish({"model": SHA, "sources": {f"c{n}": {"i": b"x"} for n in range(40)}}): "ERROR",
    }
    collector.wait_finals(len(expect))
    # A replay of a stored reply: the first request again, under its message_id.
    first = next(iter(expect))
    producer.publish({"model": SHA, "sources": {"cam": {"image": b"ok"}}}, message_id=first)
    wait_until(lambda: collector.poll() and len(collector.finals()[first]) == 2, 15, what="the replay")
    wait_until(lambda: scrape(port).get("edge_worker_requests_received_total") == 7, 10, what="7 deliveries")
    values = scrape(port)
    assert values["edge_worker_jobs_in_progress"] == 0
    finished = worker.events("job_finished")
    assert len(finished) == 7, [(f.get("message_id"), f["status"]) for f in finished]
    by_id: dict[str, list[str]] = {}
    for line in finished:
        by_id.setdefault(line["message_id"], []).append(line["status"])
    assert by_id == {m: [s] for m, s in expect.items() if m != first} | {first: ["COMPLETE", "REPLAYED"]}
    assert sum(v for k, v in values.items() if k.startswith("edge_worker_jobs_finished_total")) == 7
    # A hand-back at drain: a long job, SIGTERM, the drain timeout passes, the request goes back.
    long = producer.publish({"model": SLEEP, "sources": {"job": {"seconds": "20"}}})
    wait_until(lambda: any(e.get("message_id") == long for e in worker.events("job_submitted")), 10, what="submit")
    assert worker.proc is not None
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=20) == 0
    last = [line for line in worker.events("job_finished") if line["message_id"] == long]
    assert [line["status"] for line in last] == ["ABANDONED"]
    assert producer.message_count(queues.queue) == 1  # handed back, not lost


def test_the_too_large_builders_keep_the_jobs_identity_and_counts_and_drop_the_results() -> None:
    """The interface the publish path uses when the broker refuses a reply for its size (pure logic)."""
    reply = {
        "status": "COMPLETE",
        "final": True,
        "job_identifier": "j-1",
        "request_id": "r",
        "correlation_id": "c",
        "model": {"identifier": "sha256", "version": "1.0.0", "name": "x"},
        "explain": False,
        "total": 2,
        "pending": 0,
        "completed": 2,
        "failed": 0,
        "job_inputs": ["a", "b"],
        "created_at": "t0",
        "updated_at": "t1",
        "submitted_at": "t0",
        "finished_at": "t1",
        "elapsed_ms": 12,
        "results": {"a": {"x": "y" * 5000}, "b": {}},
        "failures": {"b": {}},
    }
    small = too_large_reply(reply, size_bytes=9000, limit_bytes=4096)
    assert small["status"] == "ERROR" and small["final"] is True
    assert small["error"]["code"] == "REPLY_TOO_LARGE"
    assert "9000 bytes" in small["error"]["message"] and "4096 bytes" in small["error"]["message"]
    assert "results" not in small and "failures" not in small
    keep = ("job_identifier", "request_id", "correlation_id", "total", "completed", "failed", "elapsed_ms")
    assert {k: small[k] for k in keep} == {k: reply[k] for k in keep}
    encoded = msgpack.packb(reply, use_bin_type=True)
    again = msgpack.unpackb(too_large_encoded(encoded, limit_bytes=4096), raw=False)
    assert again["error"]["message"].startswith(f"the final reply (COMPLETE) with its results is {len(encoded)} bytes")
