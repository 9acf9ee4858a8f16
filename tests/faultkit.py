"""Helpers for the fault tests: a request stream whose edge jobs can be matched to its requests, a producer
and an observer that survive broker restarts, counting, rabbitmqctl, and worker processes with test-only
patches (the patches live in the test's command line, never in the worker's code).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgpack
import pika
import pika.exceptions

from tests.conftest import Queues, WorkerProcess, wait_until

SLEEP_MODEL = {"identifier": "sleep", "version": "1.0.0"}


# -- the request stream ----------------------------------------------------------------------------


@dataclass
class Stream:
    """Requests with a unique message_id and a unique input each, so the edge's jobs map back to requests."""

    name: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    tags: dict[str, str] = field(default_factory=dict)  # message_id -> the request's unique input text
    bodies: dict[str, bytes] = field(default_factory=dict)

    def make(self, n: int, *, seconds: float | None = None, rng: random.Random | None = None, marker: str = "") -> str:
        """One request for the emulator's sleep model: `seconds` long (default 20-50 ms) and tagged uniquely."""
        rng = rng or random.Random()
        message_id = f"req-{self.name}-{n}"
        tag = f"{marker}{message_id}"
        duration = seconds if seconds is not None else rng.uniform(0.02, 0.05)
        body = {"model": SLEEP_MODEL, "sources": {"job": {"seconds": f"{duration:.3f}", "tag": tag}}}
        self.tags[message_id] = tag
        self.bodies[message_id] = msgpack.packb(body, use_bin_type=True)
        return message_id

    def digest(self, message_id: str) -> str:
        return hashlib.sha256(self.tags[message_id].encode()).hexdigest()


def edge_jobs_by_digest(emulator: Any) -> dict[str, list[dict[str, Any]]]:
    """The emulator's jobs, keyed by the sha256 of their "tag" input."""
    out: dict[str, list[dict[str, Any]]] = {}
    for job in emulator.stats()["jobs"]:
        for inputs in job["inputs"].values():
            tag = inputs.get("tag")
            if tag is not None:
                out.setdefault(tag["sha256"], []).append(job)
    return out


# -- broker clients that survive connection loss and broker restarts --------------------------------


def _connect(url: str) -> pika.BlockingConnection:
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.socket_timeout = 2
    params.heartbeat = 10
    return pika.BlockingConnection(params)


class ResilientProducer:
    """Publishes with confirms; on any connection failure reconnects and publishes again (at least once)."""

    def __init__(self, url: str, queues: Queues) -> None:
        self._url = url
        self.queues = queues
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None
        self.reconnects = 0

    def _ensure(self) -> Any:
        if self._channel is None or not self._channel.is_open:
            self.close()
            self._connection = _connect(self._url)
            self._channel = self._connection.channel()
            self._channel.confirm_delivery()
        return self._channel

    def publish(self, body: bytes, *, message_id: str, timeout_s: float = 60.0, queue: str | None = None) -> None:
        props = pika.BasicProperties(
            content_type="application/msgpack",
            delivery_mode=2,
            message_id=message_id,
            reply_to=self.queues.reply_queue,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._ensure().basic_publish("", queue or self.queues.queue, body, props, mandatory=True)
                return
            except pika.exceptions.UnroutableError:
                raise AssertionError(f"no queue {queue or self.queues.queue!r}: declare the queues first") from None
            except (pika.exceptions.AMQPError, OSError):
                if time.monotonic() >= deadline:
                    raise
                self.reconnects += 1
                self.close()
                time.sleep(0.2)  # sleep-ok: reconnect pace while the broker is away

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()


@dataclass
class Observed:
    finals: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # correlation_id -> final replies
    updates: int = 0
    dead: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # message_id -> dead-letter headers


# An observer pass that has not come back for this long is stuck: after a broker restart, a basic.get on a
# quorum queue can go unanswered for good while the connection itself stays up (heartbeats flow), so no
# socket timeout ends it. A new observer thread on a new connection takes over.
OBSERVER_STALL_S = 10.0


class Observer:
    """Takes every reply and dead letter of a test's queues, reconnecting as needed, in a background thread."""

    def __init__(self, url: str, queues: Queues) -> None:
        self._url = url
        self._queues = queues
        self.seen = Observed()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._generation = 0
        self._thread = threading.Thread(target=self._run, args=(0,), name="observer", daemon=True)
        self.beat = time.monotonic()
        self.errors = 0
        self.restarts = 0  # stuck observer threads replaced
        self.last_error = ""

    def __enter__(self) -> Observer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)
        print(f"OBSERVER: errors={self.errors} replaced={self.restarts} last_error={self.last_error!r}", flush=True)

    def _revive_if_stuck(self) -> None:
        """Replace a thread stuck in one pass; one stuck for good stays behind, and whatever it may still take
        is recorded all the same (it was taken off the queue)."""
        if self._stop.is_set() or time.monotonic() - self.beat < OBSERVER_STALL_S:
            return
        self.restarts += 1
        self._generation += 1
        print(f"OBSERVER-STUCK: no pass for {time.monotonic() - self.beat:.0f} s; a new thread takes over", flush=True)
        self.beat = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(self._generation,), name="observer", daemon=True)
        self._thread.start()

    def _run(self, generation: int) -> None:
        connection: pika.BlockingConnection | None = None
        while not self._stop.is_set() and generation == self._generation:
            self.beat = time.monotonic()
            try:
                if connection is None or not connection.is_open:
                    connection = _connect(self._url)
                    channel = connection.channel()
                took = self._take(channel, self._queues.reply_queue, self._on_reply)
                took += self._take(channel, self._queues.dead_letter_queue, self._on_dead)
                if not took:
                    self._stop.wait(0.02)
            except Exception as exc:  # noqa: BLE001 -- whatever pika raises, the observer must not die
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:200]
                if connection is not None:
                    with contextlib.suppress(Exception):
                        connection.close()
                connection = None
                self._stop.wait(0.2)
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()

    @staticmethod
    def _take(channel: Any, queue: str, handle: Callable[[Any, bytes], None]) -> int:
        taken = 0
        while taken < 500:
            try:
                method, props, body = channel.basic_get(queue, auto_ack=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code == 404:  # not declared yet
                    raise
                raise
            if method is None:
                break
            handle(props, body)
            taken += 1
        return taken

    def _on_reply(self, props: Any, body: bytes) -> None:
        reply = msgpack.unpackb(body, raw=False)
        with self._lock:
            if reply.get("final"):
                self.seen.finals.setdefault(props.correlation_id, []).append(reply)
            else:
                self.seen.updates += 1

    def _on_dead(self, props: Any, _body: bytes) -> None:
        with self._lock:
            self.seen.dead.setdefault(props.message_id, []).append(dict(props.headers or {}))

    def finished(self, message_ids: list[str]) -> int:
        """How many of these requests have a final reply or a dead-letter copy."""
        self._revive_if_stuck()
        with self._lock:
            return sum(1 for m in message_ids if m in self.seen.finals or m in self.seen.dead)

    def finals_count(self) -> int:
        self._revive_if_stuck()
        with self._lock:
            return len(self.seen.finals)

    def reached(self, finals: int) -> bool:
        return self.finals_count() >= finals

    def wait_all(self, message_ids: list[str], timeout_s: float) -> None:
        wait_until(
            lambda: self.finished(message_ids) == len(message_ids),
            timeout_s,
            interval_s=0.05,
            what=f"{len(message_ids)} requests to end (now {self.finished(message_ids)}; observer: "
            f"{self.errors} errors, last {self.last_error!r}, {self.restarts} stuck threads replaced)",
        )


def declare_queues(url: str, queues: Queues, *, queue_type: str = "quorum", delivery_limit: int = 5) -> None:
    """Declare the test's queues exactly as the worker will, so requests can be queued before it starts."""
    from worker.broker import QueuePlan
    from worker.config import AmqpConfig

    plan = QueuePlan.from_config(
        AmqpConfig(
            queue=queues.queue,
            reply_queue=queues.reply_queue,
            dead_letter_queue=queues.dead_letter_queue,
            queue_type=queue_type,
            delivery_limit=delivery_limit,
        )
    )
    connection = _connect(url)
    try:
        channel = connection.channel()
        for name, arguments in plan.arguments.items():
            channel.queue_declare(name, durable=True, arguments=arguments)
    finally:
        connection.close()


# -- counting ----------------------------------------------------------------------------------------


@dataclass
class Counts:
    requests: int
    lost: int
    duplicate_jobs: int
    non_complete: int
    duplicate_replies: int
    dead_lettered: int
    edge_jobs: int
    details: dict[str, Any] = field(default_factory=dict)

    def line(self, name: str) -> str:
        return (
            f"FAULT-COUNTS {name}: requests={self.requests} lost={self.lost} duplicate_jobs={self.duplicate_jobs} "
            f"non_complete={self.non_complete} duplicate_replies={self.duplicate_replies} "
            f"dead_lettered={self.dead_lettered} edge_jobs={self.edge_jobs}"
            + "".join(f" {k}={v}" for k, v in self.details.items())
        )


def count(stream: Stream, observed: Observed, emulator: Any, message_ids: list[str] | None = None) -> Counts:
    ids = message_ids if message_ids is not None else list(stream.tags)
    jobs = edge_jobs_by_digest(emulator)
    lost = [m for m in ids if m not in observed.finals and m not in observed.dead]
    duplicate_jobs = sum(max(0, len(jobs.get(stream.digest(m), [])) - 1) for m in ids)
    statuses = Counter(r["status"] for m in ids for r in observed.finals.get(m, [])[:1])
    non_complete = sum(n for status, n in statuses.items() if status != "COMPLETE")
    duplicate_replies = sum(max(0, len(observed.finals.get(m, [])) - 1) for m in ids)
    counts = Counts(
        requests=len(ids),
        lost=len(lost),
        duplicate_jobs=duplicate_jobs,
        non_complete=non_complete,
        duplicate_replies=duplicate_replies,
        dead_lettered=sum(1 for m in ids if m in observed.dead),
        edge_jobs=sum(len(jobs.get(stream.digest(m), [])) for m in ids),
    )
    if lost:
        counts.details["lost_ids"] = lost[:5]
    if non_complete:
        counts.details["statuses"] = dict(statuses)
        counts.details["not_complete"] = {
            m: (r[0]["status"], (r[0].get("error") or {}).get("code"))
            for m in ids
            if (r := observed.finals.get(m)) and r[0]["status"] != "COMPLETE"
        }
    return counts


def ghost_jobs(
    stream: Stream, emulator: Any, workers: list[WorkerProcess], *, edge_cuts: tuple[float, ...] = ()
) -> list[dict[str, Any]]:
    """Extra edge jobs that a cut in the submit window explains; AssertionError for any other.

    The edge has no idempotency key and no job listing, so a job whose id never reached the worker cannot
    be found again, and the request is submitted again. Two cuts do that:
    - the worker dies after the edge accepted a job but before its journal recorded the id: the journal
      knows a submission was in flight, and the next worker logs `edge_job_maybe_duplicated`;
    - the edge drops the connection after creating the job, before its answer (`edge_cuts`: the moments
      the emulator was stopped): the edge client retries the submission. Such a job was created at most
      half a second before the cut.
    A ghost is named in no worker's log (a job the journal recorded is logged as submitted, or resumed by
    the next worker). Any other extra job is a bug.
    """
    named: set[str] = set()
    warned: set[str] = set()
    for worker in workers:
        for line in worker.lines():
            if line.get("job_identifier"):
                named.add(str(line["job_identifier"]))
            if line.get("event") == "edge_job_maybe_duplicated":
                warned.add(str(line.get("message_id")))
    jobs = edge_jobs_by_digest(emulator)
    ghosts: list[dict[str, Any]] = []
    unexplained: list[dict[str, Any]] = []
    for message_id in stream.tags:
        found = jobs.get(stream.digest(message_id), [])
        if len(found) < 2:
            continue
        for job in found:
            if job["id"] not in named:
                entry = {"message_id": message_id, "job": job["id"]}
                cut = any(0 <= at - job_created_at(emulator, job["id"]) <= 0.5 for at in edge_cuts)
                (ghosts if message_id in warned or cut else unexplained).append(entry)
        if sum(1 for job in found if job["id"] in named) > 1:
            unexplained.append({"message_id": message_id, "jobs": [job["id"] for job in found]})
    assert not unexplained, f"second edge jobs no death in the submit window explains: {unexplained}"
    return ghosts


def job_created_at(emulator: Any, job_id: str) -> float:
    """The job's createdAt as a Unix time, from the emulator's own API."""
    import requests

    answer = requests.get(f"{emulator.url}/api/jobs/{job_id}", timeout=5).json()
    return datetime.fromisoformat(answer["createdAt"].replace("Z", "+00:00")).timestamp()


def report(name: str, counts: Counts) -> None:
    """Print the count line (kept in the test output by `-rA`, or with -s)."""
    print(counts.line(name), flush=True)


# -- the broker, from the outside ----------------------------------------------------------------------


def rabbitmqctl(*args: str, timeout_s: float = 60.0) -> str:
    result = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout_s, check=False)
    if result.returncode != 0:
        raise AssertionError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def worker_connections(pid: int) -> list[str]:
    """Erlang pids of the broker connections the worker with this OS pid has open."""
    out = rabbitmqctl("list_connections", "pid", "client_properties", "-q")
    wanted = re.compile(r'\{"connection_name","edge-worker [^"]* pid ' + str(pid) + r'"\}')
    return [line.split("\t", 1)[0] for line in out.splitlines() if wanted.search(line)]


def close_worker_connections(pid: int, reason: str = "test") -> int:
    closed = 0
    for conn in worker_connections(pid):
        rabbitmqctl("close_connection", conn, reason)
        closed += 1
    return closed


def queue_counts(name: str) -> tuple[int, int]:
    """(ready, unacknowledged) messages of one queue, from rabbitmqctl (quorum queues: up to 5 s stale)."""
    out = rabbitmqctl("list_queues", "name", "messages_ready", "messages_unacknowledged", "--formatter", "json", "-q")
    for row in json.loads(out):
        if row["name"] == name:
            return int(row["messages_ready"]), int(row["messages_unacknowledged"])
    raise AssertionError(f"queue {name!r} not found")


def ready_count(url: str, queue: str) -> int:
    """Messages ready on a queue, from the queue itself (a passive declare: exact, unlike the statistics)."""
    connection = _connect(url)
    try:
        count: int = connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()
    return count


# -- worker processes with a test-only patch ----------------------------------------------------------

# Run the real CLI after patching one method in this process only: the production code has no test hooks.
PATCHED_RUN = """
import os, sys
import worker.jobs as jobs, worker.journal as journal
{patch}
from worker.cli import main
raise SystemExit(main(["run"]))
"""

# Dies (like a segfaulting model library) whenever it runs a request whose input contains POISON.
POISON_PATCH = """
_orig_run = jobs.JobRunner._run
def _run(self, request, route, **kw):
    if any("POISON" in str(v) for inputs in request.sources.values() for v in inputs.values()):
        os._exit(9)
    return _orig_run(self, request, route, **kw)
jobs.JobRunner._run = _run
"""

# Dies right after the journal stored what a redelivery needs (the job id, or the final reply).
DIE_AFTER_PATCH = """
_orig = journal.Journal.{method}
def _patched(self, *a, **kw):
    _orig(self, *a, **kw)
    os._exit(9)
journal.Journal.{method} = _patched
"""


@dataclass
class PatchedWorker(WorkerProcess):
    """A WorkerProcess that runs the CLI under a test-only patch."""

    patch: str = ""

    def start(self, *, wait_ready: bool = True, timeout_s: float = 20.0) -> PatchedWorker:
        self._lines.clear()
        self._read_pos = 0
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PATCHED_RUN.format(patch=self.patch)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        if wait_ready:
            self.wait_for_event("broker_consuming", timeout_s=timeout_s)
        return self


def patched(worker: WorkerProcess, patch: str) -> PatchedWorker:
    return PatchedWorker(env=dict(worker.env), log_path=worker.log_path, patch=patch)
