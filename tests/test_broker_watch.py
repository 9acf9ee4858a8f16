"""The broker link's bookkeeping as pure logic: which publish a size refusal names, and the watch's deadlines.
(The same paths run against the real broker in test_broker_faults.py and test_broker_link.py.)"""

from __future__ import annotations

import time
from typing import Any

import pika
import pika.exceptions
import pytest

from worker import broker_watch
from worker.broker_publish import Confirms, size_refusal
from worker.broker_watch import Watch


def props(message_id: str) -> pika.BasicProperties:
    return pika.BasicProperties(message_id=message_id, correlation_id=message_id)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def done(self, name: str) -> Any:
        return lambda confirmed, returned: self.events.append((name, (confirmed, returned)))

    def too_large(self, name: str) -> Any:
        return lambda size, limit: self.events.append((name, ("too large", size, limit)))


def test_size_refusal_reads_both_sizes_from_the_brokers_406_and_nothing_else() -> None:
    text = "PRECONDITION_FAILED - message size 57606 is larger than configured max size 32768"
    assert size_refusal(pika.exceptions.ChannelClosedByBroker(406, text)) == (57606, 32768)
    assert size_refusal(pika.exceptions.ChannelClosedByBroker(406, "PRECONDITION_FAILED - inequivalent arg")) is None
    assert size_refusal(pika.exceptions.ChannelClosedByBroker(404, text)) is None
    assert size_refusal(pika.exceptions.ChannelClosedByClient(200, text)) is None


def test_a_size_refusal_names_the_publish_of_that_size_and_fails_the_others() -> None:
    confirms, seen = Confirms(), Recorder()
    for name, size in (("a", 100), ("b", 57606), ("c", 90000), ("d", 57606)):
        confirms.add(seen.done(name), "q", props(name), size=size, on_too_large=seen.too_large(name))
    confirms.refuse_for_size(57606, 32768)
    assert seen.events == [
        ("a", (False, False)),
        ("b", ("too large", 57606, 32768)),  # the first of that exact size; "d" is published again
        ("c", (False, False)),
        ("d", (False, False)),
    ]
    assert len(confirms) == 0


def test_without_an_exact_size_the_largest_over_the_limit_is_the_refused_one() -> None:
    confirms, seen = Confirms(), Recorder()
    for name, size in (("a", 40000), ("b", 100), ("c", 90000)):
        confirms.add(seen.done(name), "q", props(name), size=size, on_too_large=seen.too_large(name))
    confirms.refuse_for_size(12345, 32768)
    assert dict(seen.events) == {"a": (False, False), "b": (False, False), "c": ("too large", 12345, 32768)}


def test_a_refused_publish_with_no_too_large_handler_is_just_lost() -> None:
    confirms, seen = Confirms(), Recorder()
    confirms.add(seen.done("update"), "q", props("u"), size=50000)
    confirms.refuse_for_size(50000, 32768)
    assert seen.events == [("update", (False, False))]


def test_the_oldest_unconfirmed_publish_ages_until_confirmed() -> None:
    confirms, seen = Confirms(), Recorder()
    assert confirms.oldest_age() == 0.0
    confirms.add(seen.done("a"), "q", props("a"), size=1)
    confirms._pending[1].sent_at -= 5.0
    confirms.add(seen.done("b"), "q", props("b"), size=1)
    assert 5.0 <= confirms.oldest_age() < 6.0
    confirms.on_confirm(pika.frame.Method(1, pika.spec.Basic.Ack(delivery_tag=2, multiple=True)))
    assert confirms.oldest_age() == 0.0
    assert seen.events == [("a", (True, False)), ("b", (True, False))]


def test_watch_names_a_slow_setup_step_then_a_late_confirm() -> None:
    watch = Watch(confirm_timeout_s=2.0, step_bound_s=10.0)
    watch.begin("queue declare edge.jobs")
    assert watch.problem(oldest_unconfirmed_s=0) is None
    watch.step_started -= 11
    assert watch.problem(oldest_unconfirmed_s=0) == "setup step 'queue declare edge.jobs' did not finish within 10 s"
    watch.setup_done()
    assert watch.problem(oldest_unconfirmed_s=1.5) is None
    assert watch.problem(oldest_unconfirmed_s=2.5) == "confirm timeout: a publish waited 2 s for the broker's confirm"


def test_watch_flags_an_idle_consumer_only_while_ready_messages_wait_and_it_has_room(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(broker_watch, "CONSUMER_WATCHDOG_S", 3.0)
    watch = Watch(confirm_timeout_s=30.0, step_bound_s=10.0)
    watch.setup_done()
    assert not watch.wants_ready_probe(has_room=True)  # just delivered: no need to ask
    watch.last_delivery -= 10
    assert not watch.wants_ready_probe(has_room=False)  # full: the broker is right to send nothing
    assert watch.wants_ready_probe(has_room=True)
    assert not watch.wants_ready_probe(has_room=True)  # asked just now
    asked = time.monotonic()
    watch.ready_count(0, asked)
    assert watch.ready_seen_since is None
    watch.ready_count(4, asked - 4)
    assert watch.problem(oldest_unconfirmed_s=0) is not None
    assert watch.problem(oldest_unconfirmed_s=0).startswith("consumer idle: nothing delivered for 4 s")  # type: ignore[union-attr]
    watch.delivered()  # a delivery clears it
    assert watch.problem(oldest_unconfirmed_s=0) is None
    watch.ready_count(4, asked - 5)  # an answer to a question asked before that delivery counts for nothing
    assert watch.ready_seen_since is None
