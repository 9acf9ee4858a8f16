"""The job lifecycle: one delivery in, one final reply (or a dead letter, or a hand-back) out.

Runs on worker threads; knows the edge client and the journal, and nothing of pika: the broker layer hands
it a body and properties and gets an Outcome back.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import structlog

from worker.backoff import backoff_delay
from worker.edge import EdgeClient, EdgeJob, EdgeResults
from worker.errors import (
    DeliveryLimit,
    EdgeError,
    EdgeUnavailable,
    InvalidRequest,
    JobError,
    JobNotFound,
    JobTimeout,
)
from worker.journal import Journal
from worker.messages import (
    JobRequest,
    ReplyRoute,
    decode_request,
    empty_reply,
    encode_reply,
    now_rfc3339,
)
from worker.metrics import Metrics

log = structlog.get_logger("worker.jobs")
T = TypeVar("T")

_RESULTS_WAIT_S = 5.0  # how long finished-but-not-yet-readable results are waited for
# A request becomes a suspect once a worker process has died this many times while running it. One
# crash proves little (kill -9, OOM, a power cut: everything in flight was running), and holding its
# companions back would only keep them unacknowledged for the next crash to count again; a second crash
# with the same request running is worth isolating it. Innocent companions of a poison request are counted
# by the broker at most about three times (twice beside it, once while waiting behind it), so a delivery
# limit of 4 or more spares them.
SUSPECT_AFTER_CRASHES = 2
# After a restart the broker redelivers a burst: a request that already crashed a worker while running as
# the one suspect waits this long after the first suspect of the burst arrived, so that the others (which
# rank before it) are in line by the time the line is free.
SUSPECT_GRACE_S = 0.5
# The first look at a job: the edge starts its clock somewhere between our sending the submission and its
# receipt arriving, so the look comes at sent + share x (receipt - sent) + the usual duration. The share is
# learnt per model: a first look that comes too early moves it up a lot, one that finds the job done moves
# it down a little, which settles where about one first look in 14 comes early (each costs one more call,
# a millisecond later). Measured (bench/results/profile.md): at the receipt (share 1) every look was late
# by the receipt's trip, a median 1.3 ms of added latency more than at the sending (share 0).
FIRST_LOOK_SHARE_START = 0.5
FIRST_LOOK_SHARE_UP = 0.25
FIRST_LOOK_SHARE_DOWN = 0.02


def _job_from_results(job_id: str, base: EdgeJob | None, results: EdgeResults, status: str) -> EdgeJob:
    """The finished job as its results describe it, on top of what the submission receipt said."""
    job = replace(base) if base is not None else EdgeJob(job_identifier=job_id, status=status)
    job.job_identifier = job.job_identifier or job_id
    job.status = status
    job.total = results.total or job.total
    job.completed = results.completed
    job.failed = results.failed
    job.pending = 0
    job.elapsed_ms = results.elapsed_ms or job.elapsed_ms
    job.updated_at = now_rfc3339()
    return job


class Abandoned(Exception):
    """The worker is exiting: the job's thread stops where it is; the request was handed back."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    body: bytes = field(repr=False)  # payload bytes never reach a log line
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the broker layer must do with one delivery."""

    route: ReplyRoute
    status: str
    reply: bytes | None = field(default=None, repr=False)
    dead_letter: DeadLetter | None = None
    requeue: bool = False  # hand the delivery back instead of replying
    journaled: bool = False  # the reply is in the journal (which also ended the run's running mark)


@dataclass(frozen=True, slots=True)
class JobSettings:
    job_timeout_s: float
    max_timeout_s: float
    max_request_bytes: int
    delivery_limit: int
    count_deliveries_in_journal: bool  # classic queues: the broker does not count for us
    max_resubmits: int
    upload: str
    embed_limit: int


class DurationEstimator:
    """Per model and version: a moving estimate of the job's duration, and when to take the first look."""

    def __init__(self, *, default_s: float = 0.05, alpha: float = 0.3) -> None:
        self._default_s = default_s
        self._alpha = alpha
        self._estimates: dict[tuple[str, str], float] = {}
        self._shares: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def estimate(self, model: tuple[str, str]) -> float:
        with self._lock:
            return self._estimates.get(model, self._default_s)

    def observe(self, model: tuple[str, str], seconds: float) -> None:
        seconds = max(0.001, seconds)
        with self._lock:
            old = self._estimates.get(model)
            self._estimates[model] = seconds if old is None else old + self._alpha * (seconds - old)

    def first_look(self, model: tuple[str, str], sent_at: float, receipt_at: float) -> float:
        """When to look first at a job submitted at sent_at whose receipt arrived at receipt_at."""
        with self._lock:
            share = self._shares.get(model, FIRST_LOOK_SHARE_START)
            estimate = self._estimates.get(model, self._default_s)
        return sent_at + share * max(0.0, receipt_at - sent_at) + estimate

    def share(self, model: tuple[str, str]) -> float:
        """Where in the submission's round trip the edge is taken to start this model's clock (0 to 1)."""
        with self._lock:
            return self._shares.get(model, FIRST_LOOK_SHARE_START)

    def first_look_was(self, model: tuple[str, str], *, early: bool) -> None:
        """Whether the first look found the job still running (early) or ended."""
        with self._lock:
            share = self._shares.get(model, FIRST_LOOK_SHARE_START)
            share = share + FIRST_LOOK_SHARE_UP if early else share - FIRST_LOOK_SHARE_DOWN
            self._shares[model] = min(1.0, max(0.0, share))


class SuspectLine:
    """Runs suspects (requests that were running when worker processes died) one at a time.

    Every request in flight when a process dies comes back with a higher delivery count, whichever of them
    killed it. Run together again, a poison request would take the same innocent ones down with it each
    time, until they all reached the delivery limit. Run one at a time, the poison dies alone: the journal
    marks it (a crash while it ran as the one suspect), and the others, ranked by those marks, go first the
    next time. Other requests are not held by this line: they run beside the one suspect.
    """

    def __init__(self, *, grace_s: float = SUSPECT_GRACE_S) -> None:
        self._grace_s = grace_s
        self._cond = threading.Condition()
        self._waiting: list[tuple[int, int]] = []  # (rank, arrival), a heap
        self._arrival = itertools.count()
        self._busy = False
        self._stopped = False
        self._first_arrival: float | None = None

    def acquire(self, rank: int) -> None:
        """Wait for this suspect's turn: lowest rank first, then arrival; raises Abandoned on stop()."""
        ticket = (rank, next(self._arrival))
        with self._cond:
            if self._first_arrival is None:
                self._first_arrival = time.monotonic()
            not_before = self._first_arrival + (self._grace_s if rank > 0 else 0.0)
            heapq.heappush(self._waiting, ticket)
            try:
                while True:
                    if self._stopped:
                        raise Abandoned
                    wait_s = not_before - time.monotonic()
                    if not self._busy and self._waiting[0] == ticket and wait_s <= 0:
                        break
                    self._cond.wait(wait_s if wait_s > 0 else None)
            except BaseException:
                self._waiting.remove(ticket)
                heapq.heapify(self._waiting)
                self._cond.notify_all()
                raise
            heapq.heappop(self._waiting)
            self._busy = True

    def release(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()


class EdgeGate:
    """Whether the edge answers. Workers report outages; one probe thread finds the edge again."""

    def __init__(self, client: EdgeClient, *, on_change: Callable[[bool], None] | None = None) -> None:
        self._client = client
        self._on_change = on_change
        self._up = threading.Event()
        self._up.set()
        self._lock = threading.Lock()
        self._prober: threading.Thread | None = None
        self._stopped = threading.Event()

    @property
    def is_up(self) -> bool:
        return self._up.is_set()

    def report_down(self, reason: str) -> None:
        with self._lock:
            if not self._up.is_set():
                return
            self._up.clear()
            log.warning("edge_down", reason=reason)
            self._prober = threading.Thread(target=self._probe_until_up, name="edge-probe", daemon=True)
            self._prober.start()
        if self._on_change is not None:
            self._on_change(False)

    def wait_up(self, deadline: float) -> bool:
        """Wait until the edge is up (True) or the deadline passes (False); raises Abandoned on stop()."""
        while not self._up.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._stopped.is_set():
                raise Abandoned
            self._up.wait(min(remaining, 0.5))
        return True

    def stop(self) -> None:
        self._stopped.set()

    def _probe_until_up(self) -> None:
        attempt = 0
        while not self._stopped.is_set():
            attempt += 1
            answers, why = self._client.answers()
            if not answers:
                delay = backoff_delay(attempt, base_s=0.25, cap_s=5.0) + 0.05
                log.debug("edge_probe_failed", attempt=attempt, error=why, next_probe_s=round(delay, 3))
                self._stopped.wait(delay)
                continue
            log.info("edge_up", probes=attempt)
            self._up.set()
            if self._on_change is not None:
                self._on_change(True)
            return


class JobRunner:
    """Turns deliveries into outcomes. Thread-safe: many deliveries run at once on worker threads."""

    def __init__(
        self,
        *,
        edge: EdgeClient,
        gate: EdgeGate,
        journal: Journal | None,
        settings: JobSettings,
        metrics: Metrics,
        publish_update: Callable[[ReplyRoute, bytes, str], None] | None = None,
    ) -> None:
        self._edge = edge
        self._gate = gate
        self._journal = journal
        self._settings = settings
        self._metrics = metrics
        self._publish_update = publish_update
        self.estimator = DurationEstimator()
        self._stopping = threading.Event()
        self.suspects = SuspectLine()
        self._running: dict[str, threading.Event] = {}
        self._running_lock = threading.Lock()

    def stop(self) -> None:
        """The worker exits: jobs still running are abandoned (their requests were handed back)."""
        self._stopping.set()
        self.suspects.stop()

    def _pause(self, seconds: float) -> None:
        if self._stopping.wait(seconds):
            raise Abandoned

    # -- entry point -------------------------------------------------------------------------------

    def handle(self, body: bytes, properties: Any, route: ReplyRoute) -> Outcome:
        """Process one delivery to its outcome. Never raises: a bug hands the delivery back."""
        started = time.monotonic()
        self._metrics.job_started()
        bound = log.bind(message_id=route.message_id, correlation_id=route.correlation_id)
        try:
            outcome = self._handle(body, properties, route, bound)
        except Exception as exc:  # noqa: BLE001 -- the worker's own failure: hand back; the delivery limit ends a loop
            if isinstance(exc, Abandoned) or self._stopping.is_set():
                bound.info("job_abandoned", reason="worker exiting; the request was handed back")
                return Outcome(route=route, status="ABANDONED", requeue=True)
            bound.exception("job_internal_error")
            self._metrics.job_finished("REQUEUED", time.monotonic() - started)
            return Outcome(route=route, status="REQUEUED", requeue=True)
        self._metrics.job_finished(outcome.status, time.monotonic() - started)
        return outcome

    def _handle(self, body: bytes, properties: Any, route: ReplyRoute, bound: Any) -> Outcome:
        content_type = getattr(properties, "content_type", None)
        try:
            request = decode_request(body, content_type, max_request_bytes=self._settings.max_request_bytes)
        except InvalidRequest as exc:
            route = replace(route, request_id=exc.request_id)
            bound.warning(
                "request_rejected", request_id=route.request_id, code=exc.code, error=exc.message, size_bytes=len(body)
            )
            reply = empty_reply(route, status="REJECTED", final=True)
            reply["error"] = exc.as_reply_error()
            bound.info("job_finished", status="REJECTED", code=exc.code, duration_s=0.0, request_id=route.request_id)
            return Outcome(
                route=route,
                status="REJECTED",
                reply=encode_reply(reply),
                dead_letter=DeadLetter(body=body, code=exc.code, message=exc.message),
            )
        route = replace(route, request_id=request.request_id)
        bound = bound.bind(request_id=route.request_id, model=request.model_id, version=request.version)
        if request.ignored_keys:
            bound.debug("request_keys_ignored", keys=list(request.ignored_keys))
        key = route.idempotency_key
        if key is None:
            return self._handle_request(body, properties, route, request, key=None, bound=bound)
        owned = self._claim(key, request, bound)
        try:
            return self._handle_request(body, properties, route, request, key=key, bound=bound)
        finally:
            if owned:
                self._release(key)

    def _claim(self, key: str, request: JobRequest, bound: Any) -> bool:
        """Run one delivery of an idempotency key at a time in this process.

        A redelivery (after a lost connection) of a request still running here waits for that run to end,
        then finds its reply (or its edge job) in the journal: one edge job, whichever delivery answers.
        The service attaches redeliveries by message_id before this; this catches the request_id-only ones.
        """
        limit_s = min(request.timeout_s or self._settings.job_timeout_s, self._settings.max_timeout_s) + 60
        deadline = time.monotonic() + limit_s
        while True:
            with self._running_lock:
                running = self._running.get(key)
                if running is None:
                    self._running[key] = threading.Event()
                    return True
            bound.info("delivery_waits_for_running_job", reason="the same request is running in this process")
            if not running.wait(max(0.0, deadline - time.monotonic())) or self._stopping.is_set():
                if self._stopping.is_set():
                    raise Abandoned
                bound.warning("delivery_wait_gave_up", waited_s=limit_s)
                return False

    def _release(self, key: str) -> None:
        with self._running_lock:
            done = self._running.pop(key, None)
        if done is not None:
            done.set()

    def _handle_request(
        self, body: bytes, properties: Any, route: ReplyRoute, request: JobRequest, *, key: str | None, bound: Any
    ) -> Outcome:
        entry = None
        # Requests without an id are tracked by their body: enough to count deliveries and crashes, never to
        # resume or replay (two producers may send the same bytes).
        tracking_key = key or "sha256:" + hashlib.sha256(body).hexdigest()
        if self._journal is not None:
            # Marked as run by this process in the same commit, unless it is a suspect (marked below, once it
            # is its turn) or already finished.
            entry = self._journal.record_delivery(tracking_key, mark_running_below=SUSPECT_AFTER_CRASHES)
            if entry.reply is not None and key is not None:
                bound.info("reply_replayed", job_identifier=entry.job_id, reason="already finished")
                return Outcome(route=route, status="REPLAYED", reply=entry.reply)
        deliveries = self._delivery_count(properties, entry.deliveries if entry is not None else 0)
        if deliveries > self._settings.delivery_limit:
            limit = self._settings.delivery_limit
            error = DeliveryLimit(f"delivered {deliveries} times without finishing (amqp.delivery_limit = {limit})")
            if key is None and self._journal is not None:
                self._journal.forget(tracking_key)  # dead-lettered: the same bytes sent again start afresh
            elif entry is not None and entry.running:
                assert self._journal is not None
                self._journal.record_stopped(tracking_key)
            return self._error_outcome(route, request, None, error, bound, body=body)
        resume_id = entry.job_id if entry is not None and key is not None else None
        submits = entry.submits if entry is not None else 0
        journal_key = key if entry is not None else None
        if entry is not None and entry.submitting and key is not None:
            bound.warning(
                "edge_job_maybe_duplicated",
                reason="a worker died while the edge was answering this request's submission: the edge may hold "
                "a job whose id never reached the journal; submitting again",
                previous_job_identifier=entry.job_id,
            )
        suspect = entry is not None and entry.crashes >= SUSPECT_AFTER_CRASHES
        if suspect:
            assert entry is not None
            bound.warning(
                "job_suspect",
                reason="a worker process died while running this request; it runs alone among suspects",
                crashes=entry.crashes,
                isolated_crashes=entry.isolated_crashes,
                deliveries=deliveries,
            )
            self.suspects.acquire(rank=entry.isolated_crashes)
        try:
            if self._journal is not None and (suspect or entry is None or not entry.running):
                self._journal.record_running(tracking_key, isolated=suspect)
            finished = False
            replied = False
            try:
                outcome = self._run(request, route, key=journal_key, resume_id=resume_id, submits=submits, bound=bound)
                finished = not outcome.requeue
                replied = outcome.journaled
                return outcome
            finally:
                if self._journal is not None:
                    if finished and key is None:
                        # Tracked by its bytes only to count deliveries and crashes: once answered, forget it,
                        # or the next request with the same bytes would inherit its count.
                        self._journal.forget(tracking_key)
                    elif not replied:  # record_reply has already taken the running mark off
                        self._journal.record_stopped(tracking_key)
        finally:
            if suspect:
                self.suspects.release()

    def _delivery_count(self, properties: Any, journal_count: int) -> int:
        """This delivery's number, counting from 1: the quorum queue's header, or the journal's count."""
        if self._settings.count_deliveries_in_journal:
            return journal_count
        headers = getattr(properties, "headers", None) or {}
        returned = headers.get("x-delivery-count", 0) if isinstance(headers, Mapping) else 0
        return (int(returned) if isinstance(returned, int) else 0) + 1

    # -- the edge job ------------------------------------------------------------------------------

    def _run(
        self,
        request: JobRequest,
        route: ReplyRoute,
        *,
        key: str | None,
        resume_id: str | None,
        submits: int,
        bound: Any,
    ) -> Outcome:
        started = time.monotonic()
        timeout_s = min(request.timeout_s or self._settings.job_timeout_s, self._settings.max_timeout_s)
        deadline = started + timeout_s
        job: EdgeJob | None = None
        results: EdgeResults | None = None
        job_id = resume_id
        accepted_at = sent_at = started
        if job_id is not None:
            bound = bound.bind(job_identifier=job_id)
            bound.info("job_resumed", submits=submits)
        try:
            while True:
                if job_id is None:
                    if submits > self._settings.max_resubmits:
                        raise JobNotFound(f"the edge lost the job {submits} times; resubmission used up")
                    job = self._submit_recorded(request, deadline, key, bound)
                    accepted_at = time.monotonic()
                    # The request that started the job (the submission, or the close of a chunked upload).
                    sent_at = self._edge.last_sent_at() or accepted_at
                    job_id = job.job_identifier
                    submits += 1
                    bound = bound.bind(job_identifier=job_id)
                    if key is not None and self._journal is not None:
                        self._journal.record_job(key, job_id)
                    bound.info(
                        "job_submitted",
                        input_type=request.input_type,
                        sources=len(request.sources),
                        size_bytes=request.size_bytes,
                        submits=submits,
                    )
                    if request.want_updates and self._publish_update is not None:
                        update = self._reply(job, None, request, route, final=False)
                        self._publish_update(route, encode_reply(update), "SUBMITTED")
                try:
                    job, results = self._follow(
                        job_id,
                        base=job,
                        request=request,
                        sent_at=sent_at,
                        accepted_at=accepted_at,
                        deadline=deadline,
                        bound=bound,
                    )
                except JobNotFound as exc:
                    bound.warning("job_lost_by_edge", error=exc.message, submits=submits)
                    job_id = None
                    continue
                break
        except JobTimeout as exc:
            if job_id is not None:
                self._cancel(job_id, bound)
            return self._error_outcome(route, request, job, exc, bound, started=started, key=key, job_id=job_id)
        except JobError as exc:
            return self._error_outcome(route, request, job, exc, bound, started=started, key=key, job_id=job_id)

        if results is None and (request.want_results or job.failed or job.status != "COMPLETE"):
            results = self._fetch_results(job_id, deadline, bound)
        reply = self._reply(job, results, request, route, final=True)
        if request.want_results and results is None and job.status == "COMPLETE":
            reply["results"] = {}
        encoded = encode_reply(reply)
        journaled = key is not None and self._journal is not None
        if journaled:
            assert key is not None and self._journal is not None
            self._journal.record_reply(key, encoded)
        bound.info(
            "job_finished",
            status=reply["status"],
            duration_s=round(time.monotonic() - started, 4),
            edge_elapsed_ms=job.elapsed_ms,
            completed=job.completed,
            failed=job.failed,
        )
        return Outcome(route=route, status=reply["status"], reply=encoded, journaled=journaled)

    def _submit_recorded(self, request: JobRequest, deadline: float, key: str | None, bound: Any) -> EdgeJob:
        """Submit, with the journal marking the moment the edge may know a job the journal does not."""
        unanswered = False

        def submit() -> EdgeJob:
            nonlocal unanswered
            try:
                job = self._submit(request, deadline)
            except EdgeUnavailable as exc:
                unanswered = unanswered or exc.maybe_sent
                raise
            unanswered = unanswered or job.maybe_duplicated
            return job

        if key is not None and self._journal is not None:
            self._journal.record_submitting(key)
        try:
            job = self._with_edge(submit, deadline, "submit", bound)
        except BaseException:
            if key is not None and self._journal is not None:
                self._journal.record_submitting(key, False)
            raise
        if unanswered:
            bound.warning(
                "edge_job_maybe_duplicated",
                reason="a submission reached the edge but its answer was lost (timeout or dropped connection); "
                "it was submitted again, and the edge may hold a job no reply will name",
                job_identifier=job.job_identifier,
            )
        return job

    def _submit(self, request: JobRequest, deadline: float) -> EdgeJob:
        chunked = self._settings.upload == "chunked" or (
            self._settings.upload == "auto"
            and request.input_type == "embedded"
            and sum(sum(sizes.values()) for sizes in request.input_sizes().values()) > self._settings.embed_limit
        )
        if chunked:
            return self._edge.submit_chunked(
                model_id=request.model_id,
                version=request.version,
                sources=request.sources,
                explain=request.explain,
                deadline=deadline,
            )
        return self._edge.submit_job(
            model_id=request.model_id,
            version=request.version,
            sources=request.sources,
            input_type=request.input_type,
            explain=request.explain,
            deadline=deadline,
        )

    def _with_edge(self, call: Callable[[], T], deadline: float, step: str, bound: Any) -> T:
        """Run one edge step; while the edge is down, wait for it to come back until the job's deadline."""
        while True:
            if not self._gate.wait_up(deadline):
                raise self._outage_error(step)
            try:
                result = call()
            except EdgeUnavailable as exc:
                bound.warning("edge_unavailable", step=step, error=exc.message)
                self._gate.report_down(exc.message)
                if time.monotonic() >= deadline:
                    raise self._outage_error(step) from None
                continue
            return result

    @staticmethod
    def _outage_error(step: str) -> JobError:
        if step == "submit":
            return EdgeUnavailable(
                "the edge stayed unreachable until the request's timeout; the job was never submitted"
            )
        return JobTimeout("the edge stayed unreachable until the request's timeout")

    def _follow(
        self,
        job_id: str,
        *,
        base: EdgeJob | None,
        request: JobRequest,
        sent_at: float,
        accepted_at: float,
        deadline: float,
        bound: Any,
    ) -> tuple[EdgeJob, EdgeResults | None]:
        """Look at the job until it ends: first when this model usually finishes, then backing off.

        When the results are wanted, most looks ask for them directly (one call instead of status + results);
        every fourth look, and any finish the results cannot classify, asks for the job's own status, which is
        how cancellations and lost jobs are seen.
        """
        model = (request.model_id, request.version)
        estimate = self.estimator.estimate(model)
        next_look = self.estimator.first_look(model, sent_at, accepted_at)
        # A resumed job has no submission round trip of ours: its first look teaches nothing about the share.
        submitted_here = sent_at < accepted_at
        step = max(0.001, estimate * 0.02)
        looks = 0
        last_pending = accepted_at
        while True:
            now = time.monotonic()
            if next_look >= deadline:
                self._pause(max(0.0, deadline - now))
                job = self._with_edge(
                    lambda: self._edge.get_job(job_id, deadline=deadline + 5), deadline + 5, "status", bound
                )
                if job.terminal:
                    return job, None
                raise JobTimeout(
                    f"the job did not finish within its timeout ({deadline - accepted_at:.3g} s after submission)"
                )
            self._pause(max(0.0, next_look - now))
            looks += 1
            results: EdgeResults | None = None
            if request.want_results and looks % 4 != 0:
                results = self._with_edge(
                    lambda: self._edge.get_results(job_id, deadline=deadline), deadline, "results", bound
                )
                status = results.job_status() if results is not None else None
                if status is not None and results is not None:
                    if looks == 1 and submitted_here:
                        self.estimator.first_look_was(model, early=False)
                    self._learn(model, accepted_at, last_pending, results.elapsed_ms)
                    return _job_from_results(job_id, base, results, status), results
                if results is None or not results.finished:
                    if looks == 1 and submitted_here:
                        self.estimator.first_look_was(model, early=True)
                    last_pending = time.monotonic()
                    next_look = last_pending + step
                    step = min(step * 1.5, 2.0)
                    continue
            job = self._with_edge(lambda: self._edge.get_job(job_id, deadline=deadline), deadline, "status", bound)
            if looks == 1 and submitted_here:
                self.estimator.first_look_was(model, early=not job.terminal)
            if job.terminal:
                self._learn(model, accepted_at, last_pending, job.elapsed_ms)
                return job, results if results is not None and results.finished else None
            last_pending = time.monotonic()
            next_look = last_pending + step
            step = min(step * 1.5, 2.0)

    def _learn(self, model: tuple[str, str], accepted_at: float, last_pending: float, elapsed_ms: int) -> None:
        """Feed the duration estimate: the edge's own figure, else what the looks bracket."""
        seen = time.monotonic() - accepted_at
        if elapsed_ms > 0:
            # Whole milliseconds, cut down (as the emulator does; the edge's rounding is not documented): the run
            # took between elapsed_ms and one more, and the first look is bounded by the receipt, so a low
            # estimate cannot be made up by looking later. The middle of that millisecond is the unbiased figure.
            self.estimator.observe(model, (elapsed_ms + 0.5) / 1000)
        elif last_pending == accepted_at:
            # Done at the first look: it may have finished much sooner, so aim earlier next time.
            self.estimator.observe(model, seen * 0.5)
        else:
            self.estimator.observe(model, (last_pending - accepted_at + seen) / 2)

    def _fetch_results(self, job_id: str, deadline: float, bound: Any) -> EdgeResults | None:
        wait_until = time.monotonic() + _RESULTS_WAIT_S
        attempt = 0
        while True:
            attempt += 1
            results = self._with_edge(
                lambda: self._edge.get_results(job_id, deadline=max(deadline, wait_until)),
                max(deadline, wait_until),
                "results",
                bound,
            )
            if results is not None and (results.finished or results.results or results.failures):
                return results
            if time.monotonic() >= wait_until:
                bound.warning("job_results_unavailable", attempts=attempt)
                return None
            self._pause(backoff_delay(attempt, base_s=0.01, cap_s=0.5))

    def _cancel(self, job_id: str, bound: Any) -> None:
        try:
            self._edge.cancel_job(job_id)
            bound.info("job_canceled_at_edge")
        except EdgeError as exc:
            bound.warning("job_cancel_failed", error=exc.message)

    # -- replies -----------------------------------------------------------------------------------

    def _reply(
        self,
        job: EdgeJob,
        results: EdgeResults | None,
        request: JobRequest,
        route: ReplyRoute,
        *,
        final: bool,
    ) -> dict[str, Any]:
        model = dict(job.model)
        model["identifier"] = model.get("identifier") or request.model_id
        model["version"] = model.get("version") or request.version
        model.setdefault("name", None)
        status = job.status if final else "SUBMITTED"
        reply: dict[str, Any] = {
            "status": status,
            "final": final,
            "job_identifier": job.job_identifier,
            "request_id": route.request_id,
            "correlation_id": route.correlation_id,
            "model": model,
            "explain": job.explain or request.explain,
            "total": job.total or len(request.sources),
            "pending": job.pending,
            "completed": job.completed,
            "failed": job.failed,
            "job_inputs": job.job_inputs or list(request.sources),
            "created_at": job.created_at,
            "updated_at": job.updated_at,
            "submitted_at": job.submitted_at,
            "finished_at": (job.updated_at or now_rfc3339()) if final else None,
            "elapsed_ms": job.elapsed_ms or (results.elapsed_ms if results else 0),
        }
        if not final:
            return reply
        if results is not None:
            if request.want_results:
                reply["results"] = results.results
            if results.failures:
                reply["failures"] = results.failures
        if job.status == "FAILED":
            reply["error"] = {
                "code": "JOB_FAILED",
                "message": "the edge ran the job and every input failed",
                "retryable": False,
            }
        elif job.status == "CANCELED":
            reply["error"] = {"code": "JOB_CANCELED", "message": "the job was cancelled at the edge", "retryable": True}
        elif job.status in {"TIMEOUT", "ERROR"}:
            reply["error"] = {
                "code": job.status if job.status == "TIMEOUT" else "ERROR",
                "message": f"the edge ended the job with status {job.status}",
                "retryable": True,
            }
        return reply

    def _error_outcome(
        self,
        route: ReplyRoute,
        request: JobRequest,
        job: EdgeJob | None,
        error: JobError,
        bound: Any,
        *,
        started: float | None = None,
        key: str | None = None,
        body: bytes | None = None,
        job_id: str | None = None,
    ) -> Outcome:
        status = "TIMEOUT" if isinstance(error, JobTimeout) else "ERROR"
        reply = (
            empty_reply(route, status=status, final=True)
            if job is None
            else self._reply(job, None, request, route, final=True)
        )
        reply["status"] = status
        if job is None:
            reply["model"] = {"identifier": request.model_id, "version": request.version, "name": None}
            reply["explain"] = request.explain
            reply["total"] = len(request.sources)
            reply["job_inputs"] = list(request.sources)
            reply["job_identifier"] = job_id  # a resumed job reached the edge even if we hold no receipt
        reply["error"] = error.as_reply_error()
        encoded = encode_reply(reply)
        journaled = key is not None and self._journal is not None
        if journaled:
            assert key is not None and self._journal is not None
            self._journal.record_reply(key, encoded)
        duration = 0.0 if started is None else time.monotonic() - started
        bound.info("job_finished", status=status, code=error.code, error=error.message, duration_s=round(duration, 4))
        dead = DeadLetter(body=body, code=error.code, message=error.message) if body is not None else None
        return Outcome(route=route, status=status, reply=encoded, dead_letter=dead, journaled=journaled)
