"""The job lifecycle: one delivery in, one Outcome out (a final reply, a dead letter, or a hand-back).

Runs on worker threads; knows the edge client and the journal, and nothing of pika: the broker layer hands
it a body and properties and gets an Outcome back. Read top to bottom: decode, claim the idempotency key,
count the delivery (and isolate suspects), submit, follow, reply.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import structlog

from worker.edge import EdgeClient, EdgeJob, EdgeResults
from worker.errors import DeliveryLimit, EdgeError, InvalidRequest, JobError, JobNotFound, JobTimeout
from worker.jobs.adopt import find_lost_job
from worker.jobs.calls import Calls
from worker.jobs.claims import KeyClaims
from worker.jobs.finish import Finisher
from worker.jobs.follow import DurationEstimator, JobFollower
from worker.jobs.gate import EdgeGate
from worker.jobs.outcome import Abandoned, Outcome
from worker.jobs.replies import final_reply, job_reply
from worker.jobs.settings import JobSettings
from worker.jobs.submit import Submitter
from worker.jobs.suspects import CrashBook, SuspectLine, Tracked
from worker.jobs.threads import EdgeSlots, SlotHold
from worker.journal import Journal
from worker.messages import JobRequest, ReplyRoute, decode_request, encode_reply
from worker.metrics import Metrics
from worker.tracing import job_trace, traced_edge

__all__ = ["JobRunner", "JobSettings"]  # JobSettings: worker.jobs.settings, re-exported

log = structlog.get_logger("worker.jobs")


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
        slots: EdgeSlots | None = None,
    ) -> None:
        edge = traced_edge(edge)  # each edge call carries the running job's trace (worker.tracing)
        self._edge = edge
        self._slots = slots
        self._gate = gate
        self._journal = journal
        self._settings = settings
        self._metrics = metrics
        self._publish_update = publish_update
        self.estimator = DurationEstimator()
        self._submitter = Submitter(edge=edge, gate=gate, journal=journal, settings=settings)
        self._follower = JobFollower(edge=edge, gate=gate, estimator=self.estimator, pause=self._pause)
        self._stopping = threading.Event()
        self.suspects = SuspectLine()
        self._crashes = CrashBook(journal, line=self.suspects)
        self._claims = KeyClaims(self._stopping)
        self._calls = Calls()
        self._finish = Finisher(settings=settings, journal=journal, calls=self._calls)

    def stop(self, *, wait_s: float = 2.0) -> None:
        """The worker exits: jobs still running are abandoned (their requests were handed back).

        Waits up to wait_s for their threads to say so (each handle() writes its job_finished line); one still
        blocked in an edge call then gets its job_finished (ABANDONED) from here, so that none goes unlogged.
        """
        self._stopping.set()
        self.suspects.stop()
        for call in self._calls.wait_ended(wait_s):
            call.finish(status="ABANDONED", duration_s=time.monotonic() - call.started, reason="worker exiting")

    def _pause(self, seconds: float) -> None:
        if self._stopping.wait(seconds):
            raise Abandoned

    # -- entry point -------------------------------------------------------------------------------

    def handle(self, body: bytes, properties: Any, route: ReplyRoute, *, received_at: float | None = None) -> Outcome:
        """Process one delivery to its outcome, in the request's trace (worker.tracing). Never raises.

        `received_at` (time.monotonic()) is when the delivery arrived: a delivery held for an edge slot
        (worker.lookahead) spends its wait out of its own timeout, whose clock starts there.
        """
        with job_trace(properties, queue=self._settings.queue, body_size=len(body)) as trace:
            outcome = self._handle_delivery(body, properties, trace.reply_route(route), trace.log_fields, received_at)
            trace.finish(outcome.status, code=outcome.dead_letter.code if outcome.dead_letter else None)
            return outcome

    def _handle_delivery(
        self, body: bytes, properties: Any, route: ReplyRoute, trace: dict[str, str], received_at: float | None
    ) -> Outcome:
        """Process one delivery to its outcome. Never raises: a bug hands the delivery back.

        Every call ends with exactly one `job_finished` line and one metrics.job_finished (the in-progress
        gauge comes back down), whichever way it ends: a reply, a replay, a dead letter, a hand-back.
        """
        started = time.monotonic()
        self._metrics.job_started()
        bound = log.bind(message_id=route.message_id, correlation_id=route.correlation_id, **trace)
        call = self._calls.open(bound, started)
        try:
            outcome = self._handle(body, properties, route, bound, received_at or started)
        except Exception as exc:  # noqa: BLE001 -- the worker's own failure: hand back; the delivery limit ends a loop
            if isinstance(exc, Abandoned) or self._stopping.is_set():
                bound.info("job_abandoned", reason="worker exiting; the request was handed back")
                outcome = Outcome(route=route, status="ABANDONED", requeue=True)
            else:
                bound.exception("job_internal_error")
                outcome = Outcome(route=route, status="REQUEUED", requeue=True)
        duration = time.monotonic() - started
        # The paths that end without a reply of their own (a hand-back, an internal error) say so here.
        call.finish(status=outcome.status, duration_s=duration, quiet=True)
        self._metrics.job_finished(outcome.status, duration)
        self._calls.close(call)
        return outcome

    def _handle(self, body: bytes, properties: Any, route: ReplyRoute, bound: Any, received_at: float) -> Outcome:
        content_type = getattr(properties, "content_type", None)
        pattern = self._settings.reply_to_pattern
        if route.reply_to is not None and pattern is not None and pattern.fullmatch(route.reply_to) is None:
            return self._finish.forbidden(body, content_type, route, bound)
        try:
            request = decode_request(body, content_type, max_request_bytes=self._settings.max_request_bytes)
        except InvalidRequest as exc:
            return self._finish.rejected(body, route, exc, bound)
        route = replace(route, request_id=request.request_id)
        bound = bound.bind(request_id=route.request_id, model=request.model_id, version=request.version)
        if request.ignored_keys:
            bound.debug("request_keys_ignored", keys=list(request.ignored_keys))
        key = route.idempotency_key
        delivery = _Delivery(body, properties, route, request, key, bound, received_at)
        if key is None:
            return self._in_slot(delivery)
        # A redelivery of a request still running here waits for that run, then replays or resumes it.
        owned = self._claims.claim(key, self._settings.timeout_s(request) + 60, bound)
        try:
            return self._in_slot(delivery)
        finally:
            if owned:
                self._claims.release(key)

    # -- an edge slot (worker.concurrency of them; worker.lookahead more deliveries wait here) ---------

    def _in_slot(self, d: _Delivery) -> Outcome:
        """Wait (decoded) for an edge slot, up to the request's timeout counted from its receipt, then run."""
        slot = SlotHold(self._slots)
        if not slot.take(d.received_at + self._settings.timeout_s(d.request)):
            waited = time.monotonic() - d.received_at
            held = JobTimeout(f"the request's timeout passed while it waited {waited:.3f} s for a free edge slot")
            return self._finish.error(d.route, d.request, None, held, d.bound, started=d.received_at)
        try:
            return self._handle_request(d, slot)
        finally:
            slot.release()

    # -- the journal's count: replay, delivery limit, then the run (suspects.CrashBook) -------------

    def _handle_request(self, d: _Delivery, slot: SlotHold) -> Outcome:
        tracked = self._crashes.record_delivery(d.key, d.body)
        try:
            return self._handle_tracked(tracked, d, slot)
        finally:
            self._crashes.done(tracked)

    def _handle_tracked(self, tracked: Tracked, d: _Delivery, slot: SlotHold) -> Outcome:
        route, request, key, bound = d.route, d.request, d.key, d.bound
        entry = tracked.entry
        if entry is not None and entry.reply is not None and key is not None:
            bound.info("reply_replayed", job_identifier=entry.job_id, reason="already finished")
            self._calls.log_finished(bound, status="REPLAYED", duration_s=0.0, job_identifier=entry.job_id)
            return Outcome(route=route, status="REPLAYED", reply=entry.reply)
        deliveries = self._delivery_count(d.properties, entry.deliveries if entry is not None else 0)
        if deliveries > self._settings.delivery_limit:
            limit = self._settings.delivery_limit
            error = DeliveryLimit(f"delivered {deliveries} times without finishing (amqp.delivery_limit = {limit})")
            self._crashes.give_up(tracked)
            return self._finish.error(route, request, None, error, bound, body=d.body)
        resume_id = entry.job_id if entry is not None and key is not None else None
        submits = entry.submits if entry is not None else 0
        journal_key = key if entry is not None else None
        if entry is not None and entry.submitting and key is not None and self._journal is not None:
            # A worker died while the edge was answering this request's submission: look for that job.
            found = find_lost_job(
                self._edge,
                self._journal,
                entry,
                request,
                deadline=time.monotonic() + min(self._settings.timeout_s(request), 60.0),
                bound=bound,
            )
            if found is not None:
                resume_id = found
                submits += 1
        return self._crashes.run(
            tracked,
            deliveries=deliveries,
            bound=bound,
            work=lambda: self._run(
                request,
                route,
                key=journal_key,
                resume_id=resume_id,
                submits=submits,
                bound=bound,
                received_at=d.received_at,
                slot=slot,
            ),
        )

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
        received_at: float,
        slot: SlotHold,
    ) -> Outcome:
        started = time.monotonic()
        deadline = received_at + self._settings.timeout_s(request)
        if started >= deadline:
            # Held (worker.lookahead) until its timeout passed: it never reaches the edge, not even for a
            # cancel, so that its outcome comes within receipt + timeout and the consumer timeout holds.
            held = JobTimeout(
                f"the request's timeout passed while it waited {started - received_at:.3f} s for a free slot"
            )
            return self._finish.error(route, request, None, held, bound, started=received_at, key=key, job_id=resume_id)
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
                    job = self._submitter.submit(request, deadline, key, bound)
                    accepted_at = time.monotonic()
                    # The request that started the job (the submission, or the close of a chunked upload).
                    sent_at = self._edge.last_sent_at() or accepted_at
                    job_id = job.job_identifier
                    submits += 1
                    bound = bound.bind(job_identifier=job_id)
                    bound.info(
                        "job_submitted",
                        input_type=request.input_type,
                        sources=len(request.sources),
                        size_bytes=request.size_bytes,
                        submits=submits,
                    )
                    if request.want_updates and self._publish_update is not None:
                        update = job_reply(job, None, request, route, final=False)
                        self._publish_update(route, encode_reply(update), "SUBMITTED")
                try:
                    job, results = self._follower.follow(
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
            slot.release()
            return self._finish.error(route, request, job, exc, bound, started=started, key=key, job_id=job_id)
        except JobError as exc:
            slot.release()
            return self._finish.error(route, request, job, exc, bound, started=started, key=key, job_id=job_id)
        # The edge job has ended: the next job may be submitted while this one's results and reply are made.
        slot.release()

        if results is None and (request.want_results or job.failed or job.status != "COMPLETE"):
            results = self._follower.fetch_results(job_id, deadline, bound)
        reply = final_reply(job, results, request, route)
        return self._finish.final(
            route,
            reply,
            key=key,
            bound=bound,
            started=started,
            edge_elapsed_ms=job.elapsed_ms,
            completed=job.completed,
            failed=job.failed,
        )

    def _cancel(self, job_id: str, bound: Any) -> None:
        try:
            self._edge.cancel_job(job_id)
            bound.info("job_canceled_at_edge")
        except EdgeError as exc:
            bound.warning("job_cancel_failed", error=exc.message)


@dataclass(frozen=True, slots=True)
class _Delivery:
    """A decoded delivery on its way through the lifecycle: what the steps after decoding pass along."""

    body: bytes
    properties: Any
    route: ReplyRoute
    request: JobRequest
    key: str | None  # the idempotency key, if any
    bound: Any  # the logger bound to the job's context
    received_at: float
