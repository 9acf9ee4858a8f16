"""The broker link against a broker that misbehaves for one test's queues or user only (shared lock is enough):
a consumer the broker drops silently or cancels, queues and permissions that go away after the worker was
ready, a reconnect while the edge is down. Every count line starts with BROKER-COUNTS and is printed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import Producer, Queues, ReplyCollector, WorkerProcess, wait_until
from tests.faultkit import close_worker_connections, declare_queues, patched, rabbitmqctl, ready_count
from tests.tlskit import free_port

Factory = Callable[..., WorkerProcess]
SHA_REQUEST = {"model": {"identifier": "sha256", "version": "1.0.0"}, "sources": {"cam-1": {"image": b"\x02link"}}}

# The watchdog's bounds shortened in the worker process only (its code has no test hooks).
FAST_WATCHDOG_PATCH = """
import worker.broker_watch as broker_watch
broker_watch.CONSUMER_WATCHDOG_S = 3.0
broker_watch.READY_PROBE_EVERY_S = 1.0
"""


def stays(predicate: Callable[[], bool], seconds: float, *, what: str) -> None:
    """Assert `predicate` holds at every look for `seconds` (what must NOT happen, watched for a while)."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        assert predicate(), what
        time.sleep(0.1)  # sleep-ok: the look interval of a bounded watch


def healthz(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        document: dict[str, Any] = json.loads(response.read())
    return document


def erl_queue(queue: str) -> str:
    """Erlang that binds AQ to the queue's record (vhost "/")."""
    return f'{{ok, AQ}} = rabbit_amqqueue:lookup(rabbit_misc:r(<<"/">>, queue, <<"{queue}">>)), '


def consumers(queue: str) -> int:
    out = rabbitmqctl("eval", erl_queue(queue) + "length(rabbit_amqqueue:consumers(AQ)).")
    return int(out.strip())


def drop_consumers_silently(queue: str) -> None:
    """The classic queue forgets its consumers and tells no channel: a consumer that silently gets nothing."""
    rabbitmqctl(
        "eval",
        erl_queue(queue) + "QPid = amqqueue:get_pid(AQ), "
        '[gen_server2:call(QPid, {basic_cancel, element(1, C), element(2, C), undefined, <<"test">>}, infinity)'
        " || C <- rabbit_amqqueue:consumers(AQ)], ok.",
    )


def cancel_consumers_from_the_broker(queue: str) -> None:
    """What the broker does when it cancels a consumer (consumer_cancel_notify), the channel left open: the
    queue forgets the consumer, and the channel sends the client basic.cancel."""
    rabbitmqctl(
        "eval",
        erl_queue(queue) + "QPid = amqqueue:get_pid(AQ), "
        "[begin"
        ' gen_server2:call(QPid, {basic_cancel, element(1, C), element(2, C), undefined, <<"test">>}, infinity),'
        " rabbit_channel:send_command(element(1, C), {'basic.cancel', element(2, C), true})"
        " end || C <- rabbit_amqqueue:consumers(AQ)], ok.",
    )


def test_a_consumer_the_broker_silently_forgot_is_noticed_and_the_link_reconnects(
    emulator: Any, worker_factory: Factory, producer: Producer, collector: ReplyCollector, queues: Queues
) -> None:
    worker = patched(worker_factory(emulator.url, amqp__queue_type="classic"), FAST_WATCHDOG_PATCH).start()
    wait_until(lambda: consumers(queues.queue) == 1, 10, what="the worker's consumer on the queue")
    drop_consumers_silently(queues.queue)
    assert consumers(queues.queue) == 0
    dropped_at = time.monotonic()
    ids = [producer.publish(SHA_REQUEST) for _ in range(5)]
    stuck = worker.wait_for_event("broker_link_stuck", timeout_s=20)
    assert stuck[0]["problem"].startswith("consumer idle"), stuck
    finals = collector.wait_finals(5, timeout_s=20)
    recovered_s = time.monotonic() - dropped_at
    assert sorted(finals) == sorted(ids)
    assert all(len(finals[i]) == 1 and finals[i][0]["status"] == "COMPLETE" for i in ids)
    assert worker.running() and len(worker.events("broker_consuming")) == 2
    print(f"BROKER-COUNTS silent-consumer: requests=5 complete=5 watchdog_bound_s=3 recovered_s={recovered_s:.1f}")
    assert worker.terminate() == 0


def test_a_consumer_the_broker_cancels_reconnects_and_nothing_is_lost(
    emulator: Any, worker_factory: Factory, producer: Producer, collector: ReplyCollector, queues: Queues
) -> None:
    worker = worker_factory(emulator.url, amqp__queue_type="classic").start()
    first = [producer.publish(SHA_REQUEST) for _ in range(3)]
    collector.wait_finals(3)
    cancelled_at = time.monotonic()
    cancel_consumers_from_the_broker(queues.queue)
    worker.wait_for_event("broker_consuming", count=2, timeout_s=20)
    recovered_s = time.monotonic() - cancelled_at
    reasons = [e["reason"] for e in worker.events("broker_reconnecting")]
    assert "consumer cancelled by the broker" in reasons, reasons
    ids = [producer.publish(SHA_REQUEST) for _ in range(5)]
    finals = collector.wait_finals(8)
    assert all(finals[i][0]["status"] == "COMPLETE" for i in [*first, *ids])
    print(f"BROKER-COUNTS broker-cancel: requests=8 complete={len(finals)} recovered_s={recovered_s:.1f}")
    assert worker.terminate() == 0


def test_a_queue_gone_after_ready_is_retried_not_an_exit_and_recovers_once_declared(
    *,
    broker_url: str,
    emulator: Any,
    worker_factory: Factory,
    producer: Producer,
    collector: ReplyCollector,
    queues: Queues,
) -> None:
    declare_queues(broker_url, queues, queue_type="classic")
    worker = worker_factory(emulator.url, amqp__declare="false", amqp__queue_type="classic").start()
    producer._channel.queue_delete(queues.queue)  # the broker cancels the consumer; re-setup finds no queue
    failures = worker.wait_for_event("broker_setup_failed", count=2, timeout_s=20)
    assert failures[0]["reply_code"] == 404 and queues.queue in failures[0]["error"]
    assert worker.running() and not worker.events("worker_fatal")
    fixed_at = time.monotonic()
    declare_queues(broker_url, queues, queue_type="classic")
    worker.wait_for_event("broker_consuming", count=2, timeout_s=40)
    recovered_s = time.monotonic() - fixed_at
    mid = producer.publish(SHA_REQUEST)
    assert collector.wait_finals(1)[mid][0]["status"] == "COMPLETE"
    print(
        f"BROKER-COUNTS queue-gone: setup_failures={len(worker.events('broker_setup_failed'))} "
        f"recovered_s={recovered_s:.1f} (from the queue's return)"
    )
    assert worker.terminate() == 0


def test_the_queue_missing_at_start_up_is_still_exit_78(emulator: Any, worker_factory: Factory, queues: Queues) -> None:
    worker = worker_factory(emulator.url, amqp__declare="false")
    worker.start(wait_ready=False)
    assert worker.proc is not None
    assert worker.proc.wait(30) == 78, worker.tail()


@pytest.fixture
def own_user(broker_url: str) -> Iterator[tuple[str, str]]:
    """A broker user of this test's own, with full permissions on "/"; deleted afterwards."""
    user, password = f"edge-test-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    rabbitmqctl("add_user", user, password)
    try:
        rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        yield user, password
    finally:
        rabbitmqctl("delete_user", user)


def run_healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", "healthcheck"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_permissions_refused_after_ready_are_retried_reported_not_consuming_and_recover(
    *,
    broker_url: str,
    emulator: Any,
    worker_factory: Factory,
    producer: Producer,
    collector: ReplyCollector,
    own_user: tuple[str, str],
) -> None:
    user, password = own_user
    port = free_port()
    url = broker_url.replace("guest:guest@", f"{user}:{password}@")
    worker = worker_factory(emulator.url, amqp__url=url, metrics__listen=f"127.0.0.1:{port}").start()
    rabbitmqctl("set_permissions", "-p", "/", user, "^$", ".*", ".*")  # no configure: declaring is refused
    assert close_worker_connections(worker.pid, "test: permissions changed") >= 1
    failures = worker.wait_for_event("broker_setup_failed", count=2, timeout_s=20)
    assert failures[0]["reply_code"] == 403, failures
    assert worker.running() and not worker.events("worker_fatal")
    doc = healthz(port)
    assert doc["consuming"] is False and "403" in doc["not_consuming_reason"], doc
    check = run_healthcheck(worker.env)
    assert check.returncode == 1, check.stdout + check.stderr
    assert check.stdout.startswith("not consuming: broker connection lost: setup failed on queue "), check.stdout
    assert check.stdout.count("\n") == 1 and password not in check.stdout

    fixed_at = time.monotonic()
    rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
    worker.wait_for_event("broker_consuming", count=2, timeout_s=40)
    recovered_s = time.monotonic() - fixed_at
    mid = producer.publish(SHA_REQUEST)
    assert collector.wait_finals(1)[mid][0]["status"] == "COMPLETE"
    wait_until(lambda: healthz(port)["consuming"] is True, 5, what="consuming again")
    check = run_healthcheck(worker.env)
    assert check.returncode == 0 and check.stdout.startswith("ok: "), check.stdout
    print(
        f"BROKER-COUNTS permissions: setup_failures={len(worker.events('broker_setup_failed'))} "
        f"recovered_s={recovered_s:.1f} (from the permissions' return)"
    )
    assert worker.terminate() == 0


def test_a_reconnect_during_an_edge_outage_does_not_consume_until_the_edge_returns(
    *,
    broker_url: str,
    emulator: Any,
    worker_factory: Factory,
    producer: Producer,
    collector: ReplyCollector,
    queues: Queues,
) -> None:
    port = free_port()
    worker = worker_factory(emulator.url, metrics__listen=f"127.0.0.1:{port}", edge__max_attempts=2).start()
    emulator.stop()
    first = producer.publish(SHA_REQUEST)  # the worker learns of the outage from it
    wait_until(lambda: healthz(port)["edge_up"] is False, 15, what="the edge reported down")
    assert healthz(port)["not_consuming_reason"].startswith("edge down: intake paused"), healthz(port)
    assert close_worker_connections(worker.pid, "test: reconnect during the edge outage") >= 1
    worker.wait_for_event("broker_ready", count=2, timeout_s=20)
    later = [producer.publish(SHA_REQUEST) for _ in range(3)]
    # Ready again, but no consumer while the edge is away: the four requests stay ready, no delivery burned.
    wait_until(lambda: ready_count(broker_url, queues.queue) == 4, 10, what="4 requests ready")
    stays(
        lambda: ready_count(broker_url, queues.queue) == 4 and len(worker.events("broker_consuming")) == 1,
        3.0,
        what="the worker consumed during the edge outage",
    )
    assert healthz(port)["consuming"] is False
    emulator.start()
    finals = collector.wait_finals(4, timeout_s=30)
    assert all(finals[m][0]["status"] == "COMPLETE" for m in [first, *later])
    # Deliveries: the first one twice (its channel closed under it; the second attached to its running job),
    # the later three once each.
    deliveries = _metric(port, "edge_worker_requests_received_total") + len(worker.events("delivery_attached"))
    print(f"BROKER-COUNTS gate-before-consuming: requests=4 complete=4 deliveries={deliveries:g}")
    assert deliveries == 5
    assert worker.terminate() == 0


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))
