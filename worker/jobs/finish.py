"""How a job ends: its final reply (measured against amqp.max_message_bytes, journaled), an error reply, a
rejected request (undecodable, or a reply_to outside amqp.reply_to_pattern)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from worker.edge import EdgeJob
from worker.errors import InvalidRequest, JobError
from worker.jobs.calls import Calls
from worker.jobs.outcome import DeadLetter, Outcome
from worker.jobs.replies import error_reply, rejected_reply, too_large_reply
from worker.jobs.settings import JobSettings
from worker.journal import Journal
from worker.messages import JobRequest, ReplyRoute, decode_request, encode_reply


class Finisher:
    """Builds a job's Outcome from its last reply, and writes the job's one job_finished line (Calls)."""

    def __init__(self, *, settings: JobSettings, journal: Journal | None, calls: Calls) -> None:
        self._settings = settings
        self._journal = journal
        self._calls = calls

    def forbidden(self, body: bytes, content_type: str | None, route: ReplyRoute, bound: Any) -> Outcome:
        """A reply_to outside amqp.reply_to_pattern: REJECTED to amqp.reply_queue, the request dead-lettered."""
        try:
            request_id = decode_request(
                body, content_type, max_request_bytes=self._settings.max_request_bytes
            ).request_id
        except InvalidRequest as exc:
            request_id = exc.request_id
        error = JobError(
            f"reply_to {route.reply_to!r} does not match amqp.reply_to_pattern: replies go only to the queues the "
            "operator allows",
            code="REPLY_TO_FORBIDDEN",
        )
        # No reply_to: the broker layer sends it to amqp.reply_queue; the forbidden queue gets nothing.
        route = replace(route, reply_to=None, request_id=request_id)
        bound = bound.bind(request_id=request_id)
        bound.warning("request_rejected", code=error.code, error=error.message, size_bytes=len(body))
        dead = DeadLetter(body=body, code=error.code, message=error.message)
        return self.final(route, rejected_reply(route, error), key=None, dead_letter=dead, bound=bound)

    def rejected(self, body: bytes, route: ReplyRoute, exc: InvalidRequest, bound: Any) -> Outcome:
        """A request that does not decode: REJECTED, the request dead-lettered."""
        route = replace(route, request_id=exc.request_id)
        bound.warning(
            "request_rejected", request_id=route.request_id, code=exc.code, error=exc.message, size_bytes=len(body)
        )
        dead = DeadLetter(body=body, code=exc.code, message=exc.message)
        return self.final(
            route, rejected_reply(route, exc), key=None, dead_letter=dead, bound=bound.bind(request_id=route.request_id)
        )

    def error(
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
        """An ERROR reply; with the request's body, the request is dead-lettered too."""
        reply = error_reply(route, request, job, error, job_id=job_id)
        dead = DeadLetter(body=body, code=error.code, message=error.message) if body is not None else None
        return self.final(
            route, reply, key=key, dead_letter=dead, bound=bound, started=started, code=error.code, error=error.message
        )

    def final(
        self,
        route: ReplyRoute,
        reply: dict[str, Any],
        *,
        key: str | None,
        bound: Any,
        dead_letter: DeadLetter | None = None,
        started: float | None = None,
        **fields: Any,
    ) -> Outcome:
        """The final reply, encoded, measured, and (for a request with an id) journaled before it is sent.

        A reply over amqp.max_message_bytes is replaced here by ERROR/REPLY_TOO_LARGE, and that is what the
        journal keeps: a redelivery replays a reply the broker takes.
        """
        encoded = encode_reply(reply)
        limit = self._settings.max_message_bytes
        if len(encoded) > limit:
            size = len(encoded)
            reply = too_large_reply(reply, size_bytes=size, limit_bytes=limit)
            encoded = encode_reply(reply)
            bound.warning(
                "reply_too_large", job_identifier=reply.get("job_identifier"), size_bytes=size, limit_bytes=limit
            )
            fields.update(code="REPLY_TOO_LARGE", error=reply["error"]["message"])
        error = reply.get("error")
        if isinstance(error, dict) and "code" not in fields:
            fields.update(code=error.get("code"), error=error.get("message"))
        journaled = False
        if key is not None and self._journal is not None:
            self._journal.record_reply(key, encoded)
            journaled = True
        duration = 0.0 if started is None else time.monotonic() - started
        self._calls.log_finished(bound, status=reply["status"], duration_s=duration, **fields)
        return Outcome(route=route, status=reply["status"], reply=encoded, dead_letter=dead_letter, journaled=journaled)
