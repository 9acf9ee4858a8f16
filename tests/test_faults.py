"""Nothing lost: fault tests against the real broker and the emulator, with the worker as a process.

Each test sends a stream of requests, each with a unique message_id and a unique input (so the emulator's
jobs map back to requests), injects a fault, and counts: lost requests (no final reply and no dead-letter
copy), duplicate edge jobs, non-COMPLETE final replies, and duplicate final replies (allowed: replies are
at least once; edge jobs are at most once). Every count line starts with FAULT-COUNTS and is printed.

A second edge job of one kind is counted apart, as a "ghost": the edge accepted a job and the process died
(or the edge dropped the connection) before the id reached the journal. After a kill -9 the next worker finds
such a job in the edge's job list and adopts it (jobs/adopt.py), so the kill -9 test allows no ghost at all;
where the edge dropped the connection mid-answer (the edge client retried the submission within the same
process), a ghost is still possible, and faultkit.ghost_jobs checks each one is exactly that.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Queues, WorkerProcess, edge_url, wait_until
from tests.faultkit import (
    DIE_AFTER_PATCH,
    POISON_PATCH,
    Observer,
    PatchedWorker,
    ResilientProducer,
    Stream,
    close_worker_connections,
    count,
    declare_queues,
    edge_jobs_by_digest,
    ghost_jobs,
    patched,
    queue_counts,
    rabbitmqctl,
    ready_count,
    report,
)

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


def publish(sender: ResilientProducer, stream: Stream, numbers: range, *, rng: random.Random, **kw: Any) -> list[str]:
    ids = []
    for i in numbers:
        mid = stream.make(i, rng=rng, **kw)
        sender.publish(stream.bodies[mid], message_id=mid)
        ids.append(mid)
    return ids


def assert_clean(name: str, counts: Any, *, ghosts: int = 0) -> None:
    """The contract: nothing lost, no second edge job, every final reply COMPLETE."""
    assert counts.lost == 0, counts.line(name)
    assert counts.duplicate_jobs - ghosts == 0, counts.line(name)
    assert counts.non_complete == 0, counts.line(name)


# -- 1. kill -9 -------------------------------------------------------------------------------------


@pytest.mark.both_transports
def test_kill_9_at_random_moments_loses_nothing(
    *,
    emulator: Any,
    worker_factory: Factory,
    sender: ResilientProducer,
    observer: Observer,
    tmp_path: Path,
    transport: str,
) -> None:
    seed = int(os.environ.get("FAULT_SEED") or random.randrange(1 << 30))  # FAULT_SEED repeats a run's kill points
    rng = random.Random(seed)
    state_dir = tmp_path / "state"
    stream = Stream()
    ids = publish(sender, stream, range(300), rng=rng)
    kill_points = sorted(rng.sample(range(15, 285), 5))
    workers = [worker_factory(edge_url(emulator, transport), state_dir=state_dir).start()]
    for point in kill_points:
        wait_until(partial(observer.reached, point), 60, what=f"{point} final replies")
        time.sleep(rng.uniform(0.0, 0.04))  # sleep-ok: a random moment within the stream to kill at
        workers[-1].kill()
        workers.append(worker_factory(edge_url(emulator, transport), state_dir=state_dir).start())
    observer.wait_all(ids, 90)
    assert workers[-1].terminate() == 0
    counts = count(stream, observer.seen, emulator)
    # A job the edge accepted while the worker was being killed, before its journal held the id, is found by
    # the next worker in the edge's job list and adopted: no second edge job, ghosts included.
    ghosts = ghost_jobs(stream, emulator, workers)
    adopted = sum(len(worker.events("edge_job_adopted")) for worker in workers)
    maybe = sum(len(worker.events("edge_job_maybe_duplicated")) for worker in workers)
    counts.details.update(
        kills=len(kill_points), ghosts=len(ghosts), adopted=adopted, maybe_duplicated=maybe, seed=seed
    )
    report("kill-9", counts)
    assert_clean("kill-9", counts)


# -- 2. connections closed by the broker ----------------------------------------------------------------


def publish_mixed(sender: ResilientProducer, stream: Stream, numbers: range, *, rng: random.Random) -> list[str]:
    """Short jobs (20-50 ms) with a 1.5 s one every tenth request: those are in flight when the link drops."""
    ids = []
    for i in numbers:
        mid = stream.make(i, rng=rng, seconds=1.5 if i % 10 == 5 else None)
        sender.publish(stream.bodies[mid], message_id=mid)
        ids.append(mid)
    return ids


def long_job_running(worker: WorkerProcess, observer: Observer, stream: Stream) -> bool:
    long_ids = {m for m in stream.tags if int(m.rsplit("-", 1)[1]) % 10 == 5}
    submitted = {line.get("message_id") for line in worker.events("job_submitted")}
    return any(m in submitted and observer.finished([m]) == 0 for m in long_ids)


def test_connections_closed_mid_stream_worker_reconnects_and_loses_nothing(
    *, emulator: Any, worker_factory: Factory, sender: ResilientProducer, observer: Observer
) -> None:
    rng = random.Random(2)
    stream = Stream()
    ids = publish_mixed(sender, stream, range(150), rng=rng)
    worker = worker_factory(emulator.url).start()
    for closes, finals in enumerate((40, 110), start=1):
        wait_until(partial(observer.reached, finals), 30, what=f"{finals} final replies")
        wait_until(partial(long_job_running, worker, observer, stream), 10, what="a long job in flight")
        assert close_worker_connections(worker.pid, f"test: close_connection {closes}") >= 1
        worker.wait_for_event("broker_connection_lost", count=closes, timeout_s=10)
        if closes == 1:
            ids += publish_mixed(sender, stream, range(150, 200), rng=rng)
        worker.wait_for_event("broker_consuming", count=closes + 1, timeout_s=20)
    observer.wait_all(ids, 60)
    assert worker.terminate() == 0
    counts = count(stream, observer.seen, emulator)
    attached = len(worker.events("delivery_attached"))
    counts.details.update(closes=2, attached=attached, replayed=len(worker.events("reply_replayed")))
    report("close-connections", counts)
    assert_clean("close-connections", counts)
    assert attached >= 1, "no redelivery met its request still running: the attach path went untested"


# -- 3. broker restart ----------------------------------------------------------------------------------


def test_broker_restart_mid_stream_loses_nothing(
    *, emulator: Any, worker_factory: Factory, sender: ResilientProducer, observer: Observer
) -> None:
    """stop_app / start_app on the shared broker: run it alone (the suite is sequential)."""
    rng = random.Random(3)
    stream = Stream()
    ids = publish_mixed(sender, stream, range(150), rng=rng)
    worker = worker_factory(emulator.url).start()
    wait_until(partial(observer.reached, 40), 30, what="40 final replies")
    wait_until(partial(long_job_running, worker, observer, stream), 10, what="a long job in flight")
    began = time.monotonic()
    try:
        rabbitmqctl("stop_app")
        worker.wait_for_event("broker_connection_lost", timeout_s=10)
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
    ids += publish_mixed(sender, stream, range(150, 200), rng=rng)  # the producer reconnects
    worker.wait_for_event("broker_consuming", count=2, timeout_s=60)
    outage_s = time.monotonic() - began
    observer.wait_all(ids, 90)
    assert worker.terminate() == 0
    counts = count(stream, observer.seen, emulator)
    counts.details.update(
        broker_away_s=round(outage_s, 1),
        producer_reconnects=sender.reconnects,
        attached=len(worker.events("delivery_attached")),
        replayed=len(worker.events("reply_replayed")),
        resumed=len(worker.events("job_resumed")),
    )
    report("broker-restart", counts)
    assert_clean("broker-restart", counts)


# -- 4. the edge away for several seconds -----------------------------------------------------------------

OUTAGE_S = float(os.environ.get("FAULT_OUTAGE_S", "6"))  # FAULT_OUTAGE_S tries a longer one


@pytest.mark.both_transports
def test_edge_outage_pauses_intake_and_produces_no_errors(
    *,
    emulator: Any,
    worker_factory: Factory,
    sender: ResilientProducer,
    observer: Observer,
    broker_url: str,
    queues: Queues,
    transport: str,
) -> None:
    rng = random.Random(4)
    stream = Stream()
    ids = publish(sender, stream, range(150), rng=rng)
    worker = worker_factory(edge_url(emulator, transport)).start()
    wait_until(lambda: observer.finals_count() >= 30, 30, what="30 final replies")
    cut_at = time.time()
    emulator.stop()
    stopped = time.monotonic()
    try:
        worker.wait_for_event("edge_down", timeout_s=20)
        worker.wait_for_event("broker_consumer_paused", timeout_s=5)
        ready_when_paused = ready_count(broker_url, queues.queue)
        remaining = OUTAGE_S - (time.monotonic() - stopped)
        time.sleep(max(0.0, remaining))  # sleep-ok: the outage must last OUTAGE_S, whatever the worker does
        ready_before_restart = ready_count(broker_url, queues.queue)
    finally:
        emulator.start()
    worker.wait_for_event("edge_up", timeout_s=20)
    observer.wait_all(ids, 60)
    assert worker.terminate() == 0
    counts = count(stream, observer.seen, emulator)
    # Stopping the emulator drops the connections of the calls it is serving: a submission it had accepted
    # but not yet answered is retried by the edge client, and the first job cannot be found (see ghost_jobs).
    ghosts = ghost_jobs(stream, emulator, [worker], edge_cuts=(cut_at,))
    counts.details.update(
        outage_s=OUTAGE_S,
        ready_paused=ready_when_paused,
        ready_later=ready_before_restart,
        ghost_jobs_cut_by_the_outage=len(ghosts),
    )
    report("edge-outage", counts)
    assert_clean("edge-outage", counts, ghosts=len(ghosts))
    assert counts.dead_lettered == 0
    assert ready_before_restart == ready_when_paused, "the worker kept taking requests while the edge was down"


# -- 5. the edge failing a share of calls ---------------------------------------------------------------


def test_edge_failing_30_percent_of_calls_still_completes_everything_once(
    *, emulator: Any, worker_factory: Factory, sender: ResilientProducer, observer: Observer
) -> None:
    rng = random.Random(5)
    stream = Stream()
    emulator.set_faults(fail_rate=0.3)
    ids = publish(sender, stream, range(200), rng=rng)
    worker = worker_factory(emulator.url).start()
    observer.wait_all(ids, 90)
    assert worker.terminate() == 0
    stats = emulator.stats()
    counts = count(stream, observer.seen, emulator)
    counts.details.update(injected_503=stats["failed_calls_injected"], edge_down=len(worker.events("edge_down")))
    report("edge-503", counts)
    assert_clean("edge-503", counts)
    assert stats["failed_calls_injected"] > 100


# -- 6. SIGTERM ---------------------------------------------------------------------------------------


def test_sigterm_mid_stream_drains_exits_0_and_leaves_nothing_unacknowledged(
    *,
    emulator: Any,
    worker_factory: Factory,
    sender: ResilientProducer,
    observer: Observer,
    tmp_path: Path,
    broker_url: str,
    queues: Queues,
) -> None:
    rng = random.Random(6)
    stream = Stream()
    ids = publish(sender, stream, range(100), rng=rng, seconds=0.3)
    state_dir = tmp_path / "state"
    worker = worker_factory(emulator.url, state_dir=state_dir).start()
    wait_until(lambda: observer.finals_count() >= 20, 30, what="20 final replies")
    assert worker.terminate() == 0
    drained = worker.events("worker_draining")[0]
    # Every request has its final reply (the worker acknowledged it after the reply's confirm), or is back
    # in the queue, ready; none is unacknowledged (the broker's statistics lag: wait for them to agree).
    ready = ready_count(broker_url, queues.queue)
    wait_until(
        lambda: observer.finished(ids) + ready == len(ids),
        10,
        what=f"every request answered or back ({observer.finished(ids)} + {ready})",
    )
    answered_by_first = observer.finished(ids)
    wait_until(lambda: queue_counts(queues.queue) == (ready, 0), 15, what=f"{ready} ready and 0 unacknowledged")
    second = worker_factory(emulator.url, state_dir=state_dir).start()
    observer.wait_all(ids, 60)
    assert second.terminate() == 0
    counts = count(stream, observer.seen, emulator)
    counts.details.update(in_flight_at_sigterm=drained["in_flight"], answered_before_exit=answered_by_first)
    report("sigterm", counts)
    assert_clean("sigterm", counts)
    assert drained["in_flight"] > 0, "the signal came when nothing was in flight: the test proved nothing"
    assert [e["reason"] for e in worker.events("worker_exit")] == ["SIGTERM: drained"]


def test_drain_timeout_hands_back_and_the_next_worker_resumes_the_same_edge_job(
    *,
    emulator: Any,
    worker_factory: Factory,
    sender: ResilientProducer,
    observer: Observer,
    tmp_path: Path,
    broker_url: str,
    queues: Queues,
) -> None:
    stream = Stream()
    mid = stream.make(0, seconds=4.0)
    sender.publish(stream.bodies[mid], message_id=mid)
    state_dir = tmp_path / "state"
    worker = worker_factory(emulator.url, state_dir=state_dir, worker__drain_timeout=0.5).start()
    submitted = worker.wait_for_event("job_submitted")[0]
    began = time.monotonic()
    assert worker.terminate(timeout_s=10) == 0
    assert time.monotonic() - began < 3.0, "the drain timeout did not bound the exit"
    assert worker.events("drain_timeout")[0]["handed_back"] == 1
    assert ready_count(broker_url, queues.queue) == 1
    second = worker_factory(emulator.url, state_dir=state_dir).start()
    observer.wait_all([mid], 20)
    assert second.terminate() == 0
    resumed = second.events("job_resumed")
    assert [e["job_identifier"] for e in resumed] == [submitted["job_identifier"]]
    assert observer.seen.finals[mid][0]["job_identifier"] == submitted["job_identifier"]
    counts = count(stream, observer.seen, emulator)
    report("drain-timeout", counts)
    assert_clean("drain-timeout", counts)


def test_second_signal_exits_at_once(*, emulator: Any, worker_factory: Factory, sender: ResilientProducer) -> None:
    stream = Stream()
    mid = stream.make(0, seconds=5.0)
    sender.publish(stream.bodies[mid], message_id=mid)
    worker = worker_factory(emulator.url).start()
    worker.wait_for_event("job_submitted")
    assert worker.proc is not None
    worker.proc.send_signal(signal.SIGTERM)
    worker.wait_for_event("worker_draining")
    worker.proc.send_signal(signal.SIGINT)
    assert worker.proc.wait(5) == 128 + signal.SIGINT
    assert "second signal SIGINT" in worker.events("worker_exit")[0]["reason"]


# -- 7. poison ----------------------------------------------------------------------------------------


def supervise(make: Callable[[], PatchedWorker], done: Callable[[], bool], timeout_s: float) -> list[PatchedWorker]:
    """Restart the worker whenever it dies (like systemd's Restart=on-failure) until `done()`."""
    started: list[PatchedWorker] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not done():
            if not started or not started[-1].running():
                started.append(make().start(wait_ready=False))
            assert time.monotonic() < deadline, f"not done after {timeout_s} s and {len(started)} starts"
            wait_until(lambda: done() or not started[-1].running(), deadline - time.monotonic() + 1)
    except BaseException:
        for worker in started:
            worker.kill()
        raise
    return started


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
def test_poison_request_is_dead_lettered_after_the_delivery_limit_and_others_complete(
    *,
    queue_type: str,
    emulator: Any,
    worker_factory: Factory,
    broker_url: str,
    queues: Queues,
    observer: Observer,
    tmp_path: Path,
) -> None:
    limit = 5
    declare_queues(broker_url, queues, queue_type=queue_type, delivery_limit=limit)
    sender = ResilientProducer(broker_url, queues)
    rng = random.Random(7)
    stream = Stream()
    ids = publish(sender, stream, range(10), rng=rng)
    poison = stream.make(10, marker="POISON-")
    sender.publish(stream.bodies[poison], message_id=poison)
    ids += publish(sender, stream, range(11, 60), rng=rng)
    sender.close()
    state_dir = tmp_path / "state"

    def make() -> PatchedWorker:
        base = worker_factory(
            emulator.url, state_dir=state_dir, amqp__queue_type=queue_type, amqp__delivery_limit=limit
        )
        return patched(base, POISON_PATCH)

    workers = supervise(make, lambda: observer.finished([*ids, poison]) == len(ids) + 1, 90)
    try:
        assert workers[-1].terminate() == 0
    finally:
        for worker in workers:
            worker.kill()
    deaths = sum(1 for w in workers if w.proc is not None and w.proc.returncode == 9)
    counts = count(stream, observer.seen, emulator, ids)
    ghosts = ghost_jobs(stream, emulator, list(workers))
    dead = observer.seen.dead.get(poison, [])
    poison_reply = observer.seen.finals.get(poison, [{}])[0]
    counts.details.update(
        queue_type=queue_type,
        poison_deaths=deaths,
        poison_dead_letters=len(dead),
        ghost_jobs_in_death_window=len(ghosts),
    )
    report(f"poison-{queue_type}", counts)
    assert_clean(f"poison-{queue_type}", counts, ghosts=len(ghosts))
    assert deaths == limit
    assert [h.get("x-error-code") for h in dead] == ["DELIVERY_LIMIT"]
    assert poison_reply.get("status") == "ERROR"
    assert poison_reply.get("error", {}).get("code") == "DELIVERY_LIMIT"


# -- 8. redeliveries after the journal has recorded the job or the reply ----------------------------------------


def test_redelivery_after_the_reply_was_stored_republishes_it_without_a_second_job(
    *, emulator: Any, worker_factory: Factory, sender: ResilientProducer, observer: Observer, tmp_path: Path
) -> None:
    stream = Stream()
    mid = stream.make(0, seconds=0.05)
    sender.publish(stream.bodies[mid], message_id=mid)
    state_dir = tmp_path / "state"
    first = patched(worker_factory(emulator.url, state_dir=state_dir), DIE_AFTER_PATCH.format(method="record_reply"))
    try:
        first.start(wait_ready=False)
        assert first.proc is not None and first.proc.wait(20) == 9  # died after storing the reply, before the ack
    finally:
        first.kill()
    assert observer.finished([mid]) == 0
    second = worker_factory(emulator.url, state_dir=state_dir).start()
    observer.wait_all([mid], 20)
    assert second.terminate() == 0
    assert len(second.events("reply_replayed")) == 1
    assert second.events("job_submitted") == []
    counts = count(stream, observer.seen, emulator)
    report("replay-stored-reply", counts)
    assert_clean("replay-stored-reply", counts)
    assert counts.edge_jobs == 1


def test_redelivery_mid_job_resumes_the_same_edge_job(
    *, emulator: Any, worker_factory: Factory, sender: ResilientProducer, observer: Observer, tmp_path: Path
) -> None:
    stream = Stream()
    mid = stream.make(0, seconds=1.0)
    sender.publish(stream.bodies[mid], message_id=mid)
    state_dir = tmp_path / "state"
    first = patched(worker_factory(emulator.url, state_dir=state_dir), DIE_AFTER_PATCH.format(method="record_job"))
    try:
        first.start(wait_ready=False)
        assert first.proc is not None and first.proc.wait(20) == 9  # died right after the edge accepted the job
    finally:
        first.kill()
    [job] = emulator.stats()["jobs"]
    assert job["status"] in {"SUBMITTED", "IN_PROGRESS"}
    second = worker_factory(emulator.url, state_dir=state_dir).start()
    observer.wait_all([mid], 20)
    assert second.terminate() == 0
    assert [e["job_identifier"] for e in second.events("job_resumed")] == [job["id"]]
    assert observer.seen.finals[mid][0]["job_identifier"] == job["id"]
    counts = count(stream, observer.seen, emulator)
    report("resume-mid-job", counts)
    assert_clean("resume-mid-job", counts)


# -- 9. the edge forgetting jobs ----------------------------------------------------------------------------


@pytest.mark.parametrize(("max_resubmits", "status"), [(2, "COMPLETE"), (0, "ERROR")])
def test_a_job_the_edge_forgets_is_resubmitted_then_lost(
    *,
    max_resubmits: int,
    status: str,
    emulator: Any,
    worker_factory: Factory,
    sender: ResilientProducer,
    observer: Observer,
) -> None:
    stream = Stream()
    mid = stream.make(0, seconds=1.0)
    sender.publish(stream.bodies[mid], message_id=mid)
    worker = worker_factory(emulator.url, edge__max_resubmits=max_resubmits).start()
    worker.wait_for_event("job_submitted")
    emulator.forget_all_jobs()
    observer.wait_all([mid], 20)
    assert worker.terminate() == 0
    reply = observer.seen.finals[mid][0]
    assert reply["status"] == status
    jobs = edge_jobs_by_digest(emulator)[stream.digest(mid)]
    assert len(worker.events("job_lost_by_edge")) == 1
    if max_resubmits:
        assert [j.get("forgotten", False) for j in jobs] == [True, False]
        assert reply["job_identifier"] == jobs[1]["id"]
    else:
        assert len(jobs) == 1
        assert reply["error"]["code"] == "JOB_LOST"


# -- 10. long jobs vs the broker's consumer timeout ------------------------------------------------------------


# RabbitMQ 3.10.8 (the broker here) has no per-queue consumer timeout: a policy key "consumer-timeout" is
# refused ("not recognised policy settings"), and an x-consumer-timeout queue argument is accepted but
# ignored (a 5 s value left a consumer holding an unacknowledged message for 75 s). So the worker relies on
# the broker-wide consumer_timeout, which amqp.consumer_timeout mirrors.


def test_a_job_timeout_that_cannot_fit_the_consumer_timeout_is_refused_at_start_up(
    *, emulator: Any, worker_factory: Factory
) -> None:
    worker = worker_factory(emulator.url, edge__job_timeout=1790, amqp__consumer_timeout=1800)
    worker.start(wait_ready=False)
    assert worker.proc is not None
    assert worker.proc.wait(20) == 78
    text = worker.log_path.read_text()
    assert "edge.job_timeout" in text and "amqp.consumer_timeout" in text


# -- the edge gate's reports, out of order ------------------------------------------------------------------


def test_a_stale_edge_down_report_after_the_edge_came_back_does_not_leave_intake_paused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker thread reports "down" and the probe thread "up" with no order between them (both call the
    daemon from their own thread): whatever order the loop gets them in, intake follows the gate's state."""
    from worker.config import load_config
    from worker.service import Daemon

    config = load_config(None, environ={"EDGE_WORKER_WORKER__STATE_DIR": str(tmp_path)})
    daemon = Daemon(config)
    calls: list[str] = []
    monkeypatch.setattr(daemon._link, "pause_consuming", lambda *_a, **_k: calls.append("pause"))
    monkeypatch.setattr(daemon._link, "resume_consuming", lambda *_a, **_k: calls.append("resume"))
    assert daemon._gate.is_up
    daemon._on_edge_change(True)  # the probe's "up" arrives first ...
    daemon._on_edge_change(False)  # ... then the stale "down" of the thread that saw the outage
    daemon._ioloop.add_callback_threadsafe(daemon._ioloop.stop)
    daemon._ioloop.start()
    daemon._ioloop.close()
    assert calls[-1] == "resume"
