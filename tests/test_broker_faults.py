"""A broker that misbehaves broker-wide: publishers blocked by a memory alarm, a message size limit lowered.

These change the shared broker's settings (restored in a finally): run this file ALONE, under the exclusive
lock (`flock -x /tmp/edge-worker-broker.lock .venv/bin/pytest tests/test_broker_faults.py`).
Every count line starts with BROKER-COUNTS and is printed (`-s` or `-rA` keeps it).
"""

from __future__ import annotations

import json
import random
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgpack
import pytest

from tests.conftest import Queues, WorkerProcess, wait_until
from tests.faultkit import Observer, ResilientProducer, Stream, count, declare_queues, queue_counts, rabbitmqctl
from tests.tlskit import free_port

pytestmark = pytest.mark.fault

Factory = Callable[..., WorkerProcess]


@pytest.fixture
def sender(broker_url: str, queues: Queues) -> Iterator[ResilientProducer]:
    declare_queues(broker_url, queues)
    p = ResilientProducer(broker_url, queues)
    yield p
    p.close()


@pytest.fixture
def observer(broker_url: str, queues: Queues) -> Iterator[Observer]:
    with Observer(broker_url, queues) as o:
        yield o


def healthz(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        document: dict[str, Any] = json.loads(response.read())
    return document


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
    assert len(values) == 1, f"{name}: {values}"
    return values[0]


@contextmanager
def memory_alarm() -> Iterator[Callable[[], None]]:
    """Block every publisher (a memory alarm); yields a function that clears it. Restored in any case."""
    old = rabbitmqctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().").strip()
    if old.startswith("{absolute,"):
        restore = ["set_vm_memory_high_watermark", "absolute", old.strip("{}").split(",")[1]]
    else:
        float(old)  # a fraction, as rabbitmqctl prints it
        restore = ["set_vm_memory_high_watermark", old]
    rabbitmqctl("set_vm_memory_high_watermark", "0.0000001")
    restored = False

    def clear() -> None:
        nonlocal restored
        if not restored:
            rabbitmqctl(*restore)
            restored = True

    try:
        yield clear
    finally:
        clear()


@contextmanager
def max_message_size(limit: int) -> Iterator[None]:
    """The broker's max_message_size lowered (new channels use it); restored afterwards."""
    old = rabbitmqctl("eval", "application:get_env(rabbit, max_message_size).").strip()
    assert old.startswith("{ok,"), old
    old_value = int(old.strip("{}").split(",")[1])
    rabbitmqctl("eval", f"application:set_env(rabbit, max_message_size, {limit}).")
    try:
        yield
    finally:
        rabbitmqctl("eval", f"application:set_env(rabbit, max_message_size, {old_value}).")


def test_blocked_publishers_confirm_timeout_reconnects_not_consuming_then_all_complete(
    *, emulator: Any, worker_factory: Factory, sender: ResilientProducer, observer: Observer
) -> None:
    """A memory alarm blocks the worker's reply publishes: after amqp.confirm_timeout the connection is dropped,
    and no new connection consumes while the probe publish stays unconfirmed. Cleared: everything completes."""
    port = free_port()
    stream = Stream()
    rng = random.Random(11)
    ids = []
    for i in range(24):
        mid = stream.make(i, seconds=rng.uniform(0.5, 1.0))
        sender.publish(stream.bodies[mid], message_id=mid)
        ids.append(mid)
    worker = worker_factory(
        emulator.url, amqp__confirm_timeout=2, amqp__heartbeat=5, metrics__listen=f"127.0.0.1:{port}"
    ).start()
    wait_until(lambda: len(worker.events("job_submitted")) >= 8, 15, what="8 jobs running")
    with memory_alarm() as clear:
        alarm_at = time.monotonic()
        stuck = worker.wait_for_event("broker_link_stuck", timeout_s=20)
        assert stuck[0]["problem"].startswith("confirm timeout"), stuck
        detected_s = time.monotonic() - alarm_at
        doc = wait_until(lambda: (d := healthz(port))["consuming"] is False and d, 10, what="consuming false")
        assert "confirm timeout" in doc["not_consuming_reason"] or "blocked" in doc["not_consuming_reason"], doc
        assert metric(port, "edge_worker_consuming") == 0
        # Reconnected, but the probe publish stays unconfirmed: the next connections never consume.
        worker.wait_for_event("broker_link_stuck", count=2, timeout_s=30)
        consuming_during = len(worker.events("broker_consuming"))
        assert consuming_during == 1, worker.tail()
        assert healthz(port)["consuming"] is False
        finished_during = observer.finished(ids)
        clear()
        cleared_at = time.monotonic()
        observer.wait_all(ids, 90)
        recovered_s = time.monotonic() - cleared_at
    assert healthz(port)["consuming"] is True
    assert metric(port, "edge_worker_consuming") == 1
    assert worker.terminate() == 0
    counts = count(stream, observer.seen, emulator)
    counts.details.update(
        stuck=len(worker.events("broker_link_stuck")),
        detected_s=round(detected_s, 1),
        recovered_s=round(recovered_s, 1),
        finished_during_alarm=finished_during,
        replayed=len(worker.events("reply_replayed")),
    )
    print(counts.line("BROKER-COUNTS memory-alarm"), flush=True)
    assert counts.lost == 0 and counts.duplicate_jobs == 0 and counts.non_complete == 0, counts.line("alarm")
    assert counts.dead_lettered == 0


BIG_SOURCES = 400  # a request of about 8 KB whose reply, with one result per source, is well over 40 KB


def test_reply_over_the_broker_size_limit_is_reply_too_large_and_costs_the_others_nothing(
    *, emulator: Any, worker_factory: Factory, sender: ResilientProducer, observer: Observer, queues: Queues
) -> None:
    port = free_port()
    limit = 32 * 1024
    stream = Stream()
    big = {
        "model": {"identifier": "sha256", "version": "1.0.0"},
        "sources": {f"s{i:04d}": {"image": f"x{i}"} for i in range(BIG_SOURCES)},
    }
    big_body = msgpack.packb(big, use_bin_type=True)
    assert len(big_body) < limit
    with max_message_size(limit):
        ids = []
        sender.publish(big_body, message_id="big-one")
        for i in range(20):  # as long as the big one's job: their replies are on the channel the refusal closes
            mid = stream.make(i, seconds=0.05)
            sender.publish(stream.bodies[mid], message_id=mid)
            ids.append(mid)
        worker = worker_factory(emulator.url, metrics__listen=f"127.0.0.1:{port}").start()
        observer.wait_all([*ids, "big-one"], 60)
        refused = worker.events("broker_refused_message_size")
        received = metric(port, "edge_worker_requests_received_total")
        lost = len(worker.events("broker_connection_lost"))
        assert worker.terminate() == 0
    finals = observer.seen.finals
    answer = finals["big-one"][0]
    assert answer["status"] == "ERROR", answer
    assert answer["error"]["code"] == "REPLY_TOO_LARGE"
    assert str(limit) in answer["error"]["message"]
    assert str(refused[0]["size"]) in answer["error"]["message"]
    assert "results" not in answer
    assert answer["total"] == BIG_SOURCES and answer["completed"] == BIG_SOURCES
    assert answer["job_identifier"]
    counts = count(stream, observer.seen, emulator, ids)
    counts.details.update(
        refused=len(refused),
        deliveries=int(received),
        connections_lost=lost,
        big_size=refused[0]["size"],
        big_finals=len(finals["big-one"]),
        republished=len([e for e in worker.events("publish_retry") if e.get("message_id") != "big-one"]),
    )
    print(counts.line("BROKER-COUNTS reply-too-large"), flush=True)
    assert len(refused) == 1, refused
    assert lost == 0  # the consume channel stayed: nothing was redelivered
    assert received == 21  # one delivery per request: no delivery count raised
    assert counts.lost == 0 and counts.non_complete == 0 and counts.duplicate_jobs == 0, counts.line("too large")
    assert counts.dead_lettered == 0 and "big-one" not in observer.seen.dead
    wait_until(lambda: queue_counts(queues.queue) == (0, 0), 15, what="no request left ready or unacknowledged")
