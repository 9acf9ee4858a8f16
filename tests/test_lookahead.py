"""worker.lookahead (issue 11): deliveries held beyond the concurrency, against the real broker and emulator.

interface.md §4, the last guarantee: prefetch = concurrency + lookahead, at most `concurrency` edge jobs at
once, a held delivery's wait counts toward its timeout, and the drain hands held deliveries back first.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Producer, ReplyCollector, WorkerProcess, wait_until
from worker.emulator import EdgeEmulator, EmulatorConfig
from worker.jobs import Abandoned, EdgeSlots

SLEEP_MODEL = {"identifier": "sleep", "version": "1.0.0"}
SHA_MODEL = {"identifier": "sha256", "version": "1.0.0"}


def sleeping(seconds: float, **extra: Any) -> dict[str, Any]:
    return {"model": SLEEP_MODEL, "sources": {"job": {"seconds": str(seconds)}}, **extra}


@pytest.fixture
def wide_edge() -> Iterator[EdgeEmulator]:
    """More slots than any worker here may use: the edge never limits, so its peak is the worker's."""
    emu = EdgeEmulator(EmulatorConfig(port=0, latency_s=0.05, capacity=16))
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


def test_holds_lookahead_deliveries_but_runs_only_concurrency_jobs(
    wide_edge: EdgeEmulator, worker_factory: Any, producer: Producer, collector: ReplyCollector
) -> None:
    worker = worker_factory(wide_edge.url, worker__concurrency=2, worker__lookahead=3).start()
    ids = [producer.publish(sleeping(0.4)) for _ in range(12)]
    # The broker hands over concurrency + lookahead = 5 (7 of 12 left ready) while only 2 run at the edge.
    wait_until(lambda: producer.message_count(producer.queues.queue) == 7, 10, what="5 deliveries unacked")
    assert wide_edge.stats()["running_now"] <= 2
    finals = collector.wait_finals(12, timeout_s=30)
    assert sorted(finals) == sorted(ids)
    assert all(len(replies) == 1 and replies[0]["status"] == "COMPLETE" for replies in finals.values())
    stats = wide_edge.stats()
    assert stats["jobs_submitted"] == 12
    assert stats["peak_running"] == 2, stats["peak_running"]
    [ready] = worker.events("broker_ready")
    assert ready["prefetch"] == 5


def test_held_delivery_whose_timeout_passes_while_held_gets_timeout_without_an_edge_job(
    wide_edge: EdgeEmulator, worker_factory: Any, producer: Producer, collector: ReplyCollector
) -> None:
    worker_factory(wide_edge.url, worker__concurrency=1, worker__lookahead=2).start()
    first = producer.publish(sleeping(1.5))
    short = producer.publish(sleeping(0.1, timeout=0.5))  # held 1.5 s behind the first: its 0.5 s pass
    ample = producer.publish(sleeping(0.1, timeout=30))  # held as long, with time to spare
    finals = collector.wait_finals(3, timeout_s=30)
    assert finals[first][0]["status"] == "COMPLETE"
    timed_out = finals[short][0]
    assert timed_out["status"] == "TIMEOUT"
    assert timed_out["error"]["code"] == "TIMEOUT"
    assert "while it waited" in timed_out["error"]["message"]
    assert "job_identifier" not in timed_out or not timed_out["job_identifier"]
    assert finals[ample][0]["status"] == "COMPLETE"
    stats = wide_edge.stats()
    assert stats["jobs_submitted"] == 2  # the held one that timed out never reached the edge
    assert stats["jobs_canceled"] == 0


def test_drain_hands_held_deliveries_back_first_and_another_worker_answers_them(
    wide_edge: EdgeEmulator, worker_factory: Any, producer: Producer, collector: ReplyCollector
) -> None:
    first = worker_factory(wide_edge.url, worker__concurrency=1, worker__lookahead=3).start()
    ids = [producer.publish(sleeping(1.5)) for _ in range(4)]
    wait_until(lambda: wide_edge.stats()["running_now"] == 1, 10, what="one job running")
    wait_until(lambda: producer.message_count(producer.queues.queue) == 0, 10, what="3 deliveries held")
    assert first.proc is not None
    first.proc.send_signal(15)
    [handed] = first.wait_for_event("held_handed_back", timeout_s=10)
    assert handed["deliveries"] == 3
    # Back on the queue while the running job still runs: the drain did not wait for it to hand them back.
    wait_until(lambda: producer.message_count(producer.queues.queue) == 3, 5, what="3 held requests requeued")
    assert wide_edge.stats()["running_now"] == 1
    assert first.proc.wait(30) == 0, first.tail()
    second = worker_factory(wide_edge.url, worker__concurrency=4, worker__lookahead=0).start()
    finals = collector.wait_finals(4, timeout_s=30)
    assert sorted(finals) == sorted(ids)
    assert all(len(replies) == 1 and replies[0]["status"] == "COMPLETE" for replies in finals.values())
    assert sorted(e["status"] for e in first.events("job_finished")) == ["ABANDONED"] * 3 + ["COMPLETE"]
    assert len(second.events("job_finished")) == 3
    assert wide_edge.stats()["jobs_submitted"] == 4  # each request one edge job: the held ones never started


def test_two_workers_on_one_queue_split_a_burst_evenly(
    wide_edge: EdgeEmulator, worker_factory: Any, producer: Producer, collector: ReplyCollector
) -> None:
    # The bound: each worker answers between 40 % and 60 % of the burst. Both have the same concurrency and
    # look-ahead, so the broker's round robin gives each the same head start (concurrency + lookahead) and
    # then one delivery per acknowledgement: look-ahead does not let one worker take the queue.
    workers: list[WorkerProcess] = [
        worker_factory(wide_edge.url, worker__concurrency=2, worker__lookahead=4).start() for _ in range(2)
    ]
    burst = 60
    ids = [producer.publish({"model": SHA_MODEL, "sources": {"s": {"input": b"x"}}}) for _ in range(burst)]
    finals = collector.wait_finals(burst, timeout_s=60)
    assert sorted(finals) == sorted(ids)
    wait_until(lambda: sum(len(w.events("job_finished")) for w in workers) == burst, 10, what="every job logged")
    counts = Counter({n: len(w.events("job_finished")) for n, w in enumerate(workers)})
    assert all(0.4 * burst <= c <= 0.6 * burst for c in counts.values()), counts


# -- EdgeSlots, the concurrency's slots (pure logic, real threads) -----------------------------------


def _waiter(slots: EdgeSlots, deadline: float, results: list[str], name: str) -> threading.Thread:
    def wait() -> None:
        try:
            results.append(name if slots.acquire(deadline) else f"{name}:timeout")
        except Abandoned:
            results.append(f"{name}:abandoned")

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread


def test_edge_slots_are_handed_over_first_come_first_served() -> None:
    slots = EdgeSlots(1)
    far = time.monotonic() + 30
    assert slots.acquire(far)
    got: list[str] = []
    threads = []
    for count, name in enumerate(("a", "b", "c"), start=1):
        threads.append(_waiter(slots, far, got, name))
        wait_until(lambda: slots.waiting == count, 5, what=f"{count} waiting")  # noqa: B023 -- used at once
    for expected in (["a"], ["a", "b"], ["a", "b", "c"]):
        slots.release()
        wait_until(lambda: got == expected, 5, what=f"slot order {expected}")  # noqa: B023 -- used at once
    assert slots.waiting == 0
    for thread in threads:
        thread.join(5)


def test_edge_slot_wait_ends_at_the_deadline_and_the_drain_abandons_the_others() -> None:
    slots = EdgeSlots(1)
    assert slots.acquire(time.monotonic() + 30)
    got: list[str] = []
    soon = _waiter(slots, time.monotonic() + 0.2, got, "soon")
    late = _waiter(slots, time.monotonic() + 30, got, "late")
    soon.join(5)
    assert got == ["soon:timeout"]
    wait_until(lambda: slots.waiting == 1, 5, what="one left waiting")
    assert slots.close() == 1
    late.join(5)
    assert got == ["soon:timeout", "late:abandoned"]
    with pytest.raises(Abandoned):
        slots.acquire(time.monotonic() + 30)  # closed: nothing waits any more
    slots.release()  # the holder ends normally
