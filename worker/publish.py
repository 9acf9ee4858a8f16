"""A reply's life on the IOLoop thread: publish, confirm, retry, fall back when unroutable, then ack.

The daemon hands the Outbox a finished Outcome and the deliveries it answers; the Outbox publishes the
reply (and the dead-letter copy of a rejected request), acknowledges the deliveries once the broker has
confirmed everything, and tells the daemon when a publication is settled. It knows the broker link and
two queue names, nothing of the daemon.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import pika
import structlog
from pika.adapters.select_connection import IOLoop

from worker.backoff import backoff_delay
from worker.broker import BrokerLink, Delivery
from worker.jobs import Outcome
from worker.jobs.replies import too_large_encoded
from worker.journal import Journal
from worker.messages import ReplyRoute, reply_properties_fields
from worker.metrics import Metrics

log = structlog.get_logger("worker.service")

# A reply the broker refuses is published again this many times (capped exponential backoff) before the
# request is handed back; together about a minute, well inside any consumer timeout.
PUBLISH_ATTEMPTS = 6
PUBLISH_RETRY_CAP_S = 20.0


@dataclass(frozen=True, slots=True)
class _Wiring:
    """What every publication uses: the link, the loop for retries, the fallback queues, and the counters."""

    link: BrokerLink
    ioloop: IOLoop
    reply_queue: str
    dead_letter_queue: str
    metrics: Metrics
    may_retry: Callable[[], bool]  # False while the daemon drains: hand back rather than wait
    journal: Callable[[], Journal | None]  # where a refused reply's replacement is recorded (once opened)


class Outbox:
    """The replies on their way to the broker; `on_settled` runs whenever one of them is done."""

    def __init__(
        self,
        *,
        link: BrokerLink,
        ioloop: IOLoop,
        reply_queue: str,
        dead_letter_queue: str,
        metrics: Metrics,
        may_retry: Callable[[], bool],
        on_settled: Callable[[], None],
        journal: Callable[[], Journal | None] = lambda: None,
    ) -> None:
        self._wiring = _Wiring(link, ioloop, reply_queue, dead_letter_queue, metrics, may_retry, journal)
        self._on_settled = on_settled
        self._publishing: set[_Publication] = set()

    def __len__(self) -> int:
        return len(self._publishing)

    def send(self, outcome: Outcome, *, original: Delivery, live: list[Delivery]) -> None:
        """Publish the outcome's reply (and dead letter); acknowledge `live` once all are confirmed."""
        publication = _Publication(self._wiring, outcome, original, live, on_done=self._settled)
        self._publishing.add(publication)
        publication.start()

    def send_update(self, route: ReplyRoute, body: bytes, status: str) -> None:
        """A non-final reply (SUBMITTED): published once, unconfirmed, acknowledging nothing."""
        props = reply_properties_fields({"status": status, "final": False}, route)
        self._wiring.link.publish(
            routing_key=route.reply_to or self._wiring.reply_queue,
            body=body,
            properties=pika.BasicProperties(**props),
            on_done=lambda _ok, _returned: None,
        )

    def hand_back_all(self) -> int:
        """The drain timeout: give every request back now, whatever its confirms say; returns how many."""
        handed_back = sum(publication.hand_back() for publication in self._publishing)
        self._publishing.clear()
        return handed_back

    def _settled(self, publication: _Publication) -> None:
        self._publishing.discard(publication)
        self._on_settled()


class _Publication:
    """Publish one outcome (reply, and dead-letter copy when rejected); acknowledge once all are confirmed."""

    def __init__(
        self,
        wiring: _Wiring,
        outcome: Outcome,
        original: Delivery,
        live: list[Delivery],
        *,
        on_done: Callable[[_Publication], None],
    ) -> None:
        self._wiring = wiring
        self._link = wiring.link
        self._outcome = outcome
        self._reply = outcome.reply  # replaced by the shrunk reply when the broker refuses it for its size
        self._status = _peek_status(outcome)
        self._original = original  # the first delivery: its body and properties go into a dead letter
        self._live = live
        self._on_done = on_done
        self._waiting = 0
        self._failed = False
        self._started = False
        self._done = False
        self._attempt = 0
        self._retry_handle: Any = None
        self._bound_log: Any = None

    @property
    def _log(self) -> Any:
        """The job's logger, built only when the reply path has something to say (it unpacks the reply)."""
        if self._bound_log is None:
            self._bound_log = log.bind(**_log_context(self._outcome))
        return self._bound_log

    def start(self) -> None:
        self._attempt += 1
        self._failed = False
        self._started = False
        outcome = self._outcome
        if self._reply is not None:
            self._publish_reply(outcome.route.reply_to or self._wiring.reply_queue, unroutable_from=None)
        if outcome.dead_letter is not None:
            self._publish_dead_letter(outcome.dead_letter.code, outcome.dead_letter.message, outcome.dead_letter.body)
        self._started = True
        if self._waiting == 0:
            self._finish()

    def _publish_reply(self, queue: str, *, unroutable_from: str | None) -> None:
        assert self._reply is not None
        fields = reply_properties_fields(self._status, self._outcome.route)
        if unroutable_from is not None:
            fields["headers"]["x-unroutable-reply-to"] = unroutable_from
        props = pika.BasicProperties(**fields)
        reply_queue = self._wiring.reply_queue

        def done(confirmed: bool, returned: bool) -> None:
            self._waiting -= 1
            if confirmed and returned:
                if unroutable_from is None and queue != reply_queue:
                    self._log.warning("reply_unroutable", reply_to=queue, fallback=reply_queue)
                    self._publish_reply(reply_queue, unroutable_from=queue)
                    return
                self._log.error("reply_unroutable", reply_to=queue, fallback=self._wiring.dead_letter_queue)
                body = self._original.body
                self._publish_dead_letter("REPLY_UNROUTABLE", f"no queue {queue!r} for the reply", body)
                return
            self._settle(confirmed, what="reply")

        def too_large(size: int, limit: int) -> None:
            # Published again (by the retry below) as the REPLY_TOO_LARGE reply: never the refused one again.
            self._waiting -= 1
            # The broker's max_message_size is below amqp.max_message_bytes: the runner's own REPLY_TOO_LARGE
            # builder, and the journal keeps this reply, so a redelivery replays one the broker takes.
            self._reply = too_large_encoded(self._outcome.reply or b"", limit_bytes=limit)
            key, journal = self._outcome.route.idempotency_key, self._wiring.journal()
            if self._outcome.journaled and key is not None and journal is not None:
                journal.record_reply(key, self._reply)
            self._status = {"status": "ERROR", "final": True}
            self._log.error("reply_too_large", size=size, max_size=limit, reply_to=queue)
            self._settle(False, what="reply")

        self._send(queue, self._reply, props, done, too_large)

    def _publish_dead_letter(self, code: str, message: str, body: bytes) -> None:
        original = self._original.properties
        headers = dict(getattr(original, "headers", None) or {})
        headers["x-error-code"] = code
        headers["x-error-message"] = message[:1000]
        props = pika.BasicProperties(
            content_type=original.content_type,
            content_encoding=original.content_encoding,
            headers=headers,
            delivery_mode=2,
            priority=original.priority,
            correlation_id=original.correlation_id,
            reply_to=original.reply_to,
            message_id=original.message_id,
            timestamp=original.timestamp,
            type=original.type,
            app_id=original.app_id,
        )
        dead_letter_queue = self._wiring.dead_letter_queue

        def done(confirmed: bool, returned: bool) -> None:
            self._waiting -= 1
            if returned:
                self._log.error("dead_letter_unroutable", queue=dead_letter_queue)
            if confirmed and not returned:
                self._wiring.metrics.dead_letters.labels(code=code).inc()
            self._settle(confirmed and not returned, what="dead_letter")

        self._send(dead_letter_queue, body, props, done)

    def _send(self, queue: str, body: bytes, props: pika.BasicProperties, done: Any, too_large: Any = None) -> None:
        self._waiting += 1
        if not self._link.publish(routing_key=queue, body=body, properties=props, on_done=done, on_too_large=too_large):
            self._waiting -= 1
            self._failed = True  # no channel: the delivery dies with it and comes back
            if self._waiting == 0 and self._started:
                self._finish()

    def _settle(self, confirmed: bool, *, what: str) -> None:
        if not confirmed:
            self._failed = True
            self._log.warning("publish_not_confirmed", what=what, attempt=self._attempt)
        elif what == "reply":
            self._wiring.metrics.replies.inc()
        if self._waiting == 0:
            self._finish()

    def _finish(self) -> None:
        if self._done:
            return
        if self._failed:
            live = [d for d in self._live if self._link.is_live(d)]
            if live and self._attempt < PUBLISH_ATTEMPTS and self._wiring.may_retry():
                # The broker refused it (a full reply queue with reject-publish, an internal error): try again
                # later while we still hold the request, rather than requeueing it at once, which would burn
                # through the delivery limit in milliseconds and dead-letter a request that has its answer.
                delay = backoff_delay(self._attempt, base_s=0.5, cap_s=PUBLISH_RETRY_CAP_S) + 0.1
                self._log.warning("publish_retry", attempt=self._attempt, retry_in_s=round(delay, 2))
                self._retry_handle = self._wiring.ioloop.call_later(delay, self._retry)
                return
            self._done = True
            # Nacked or lost: hand the request back; a redelivery re-publishes the journal's reply.
            for delivery in live:
                self._link.requeue(delivery)
        else:
            self._done = True
            for delivery in self._live:
                self._link.ack(delivery)
        self._on_done(self)

    def _retry(self) -> None:
        self._retry_handle = None
        if self._done:
            return
        if not any(self._link.is_live(d) for d in self._live):
            # The channel died meanwhile: the broker redelivers and the journal answers; nothing to retry.
            self._done = True
            self._on_done(self)
            return
        self.start()

    def hand_back(self) -> int:
        """Give the request back now, whatever its confirms say; returns how many deliveries."""
        self._done = True
        if self._retry_handle is not None:
            self._wiring.ioloop.remove_timeout(self._retry_handle)
        return sum(int(self._link.requeue(delivery)) for delivery in self._live)


def _log_context(outcome: Outcome) -> dict[str, Any]:
    """The job's log context for the reply path: from the route, and from the reply itself when there is one."""
    route = outcome.route
    context: dict[str, Any] = {
        "message_id": route.message_id,
        "correlation_id": route.correlation_id,
        "request_id": route.request_id,
    }
    if route.traceparent is not None:
        context["trace_id"] = route.traceparent[3:35]  # the job's trace (worker.tracing)
    try:
        reply = msgpack.unpackb(outcome.reply, raw=False) if outcome.reply else {}
    except ValueError:
        reply = {}
    model = reply.get("model") if isinstance(reply, dict) else None
    if isinstance(model, dict):
        context["model"] = model.get("identifier")
        context["version"] = model.get("version")
    if isinstance(reply, dict):
        context["job_identifier"] = reply.get("job_identifier")
    return context


def _peek_status(outcome: Outcome) -> dict[str, Any]:
    return {"status": outcome.status if outcome.status != "REPLAYED" else _replayed_status(outcome), "final": True}


def _replayed_status(outcome: Outcome) -> str:
    try:
        status = msgpack.unpackb(outcome.reply or b"", raw=False).get("status", "COMPLETE")
    except (ValueError, AttributeError):
        return "COMPLETE"
    return str(status)
