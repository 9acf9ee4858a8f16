"""What keeps the broker link from being alive but idle (contract §4, "A broker that misbehaves").

- `Confirms`: which publish each confirm, return or size refusal belongs to, and how old the oldest
  unconfirmed publish is (a confirm that never comes is a lost connection after `amqp.confirm_timeout`).
- `Watch`: the deadlines of one connection: each setup step must finish within a bound, a confirm within
  the confirm timeout, and a consumer with room must not go without deliveries while its queue has ready
  messages. Pure bookkeeping on the IOLoop thread: the link asks it once a second what is wrong, if anything.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
import structlog

log = structlog.get_logger("worker.broker")

# How often the link looks at its deadlines.
WATCH_TICK_S = 1.0
# A consumer with room that has received nothing for this long while its queue has ready messages is treated
# as a lost connection (a consumer the broker forgot without telling us).
CONSUMER_WATCHDOG_S = 30.0
# While idle, how often the queue's ready count is asked for (a passive declare: one small round trip).
READY_PROBE_EVERY_S = 5.0

_SIZE_REFUSAL = re.compile(r"message size (\d+) is larger than configured max size (\d+)")


def size_refusal(reason: BaseException) -> tuple[int, int] | None:
    """(size, limit) when a channel was closed by the broker for a message over its max_message_size."""
    if not isinstance(reason, pika.exceptions.ChannelClosedByBroker) or reason.reply_code != 406:
        return None
    match = _SIZE_REFUSAL.search(str(reason.reply_text))
    return (int(match.group(1)), int(match.group(2))) if match else None


@dataclass(slots=True)
class _Pending:
    on_done: Callable[[bool, bool], None]
    routing_key: str
    message_id: str | None
    correlation_id: str | None
    size: int
    sent_at: float
    on_too_large: Callable[[int, int], None] | None = None
    returned: bool = False

    def matches(self, routing_key: str, properties: Any) -> bool:
        return (
            not self.returned
            and self.routing_key == routing_key
            and self.message_id == properties.message_id
            and self.correlation_id == properties.correlation_id
        )


class Confirms:
    """Publisher confirms on the publish channel: which publish each ack, nack or return belongs to."""

    def __init__(self) -> None:
        self._pending: dict[int, _Pending] = {}
        self._publish_seq = 0

    def __len__(self) -> int:
        return len(self._pending)

    def reset(self) -> None:
        """A new channel numbers its publishes from 1 again."""
        self._publish_seq = 0
        self._pending.clear()

    def add(
        self,
        on_done: Callable[[bool, bool], None],
        routing_key: str,
        properties: Any,
        *,
        size: int,
        on_too_large: Callable[[int, int], None] | None = None,
    ) -> None:
        self._publish_seq += 1
        self._pending[self._publish_seq] = _Pending(
            on_done,
            routing_key,
            properties.message_id,
            properties.correlation_id,
            size,
            time.monotonic(),
            on_too_large,
        )

    def oldest_age(self) -> float:
        """Seconds the oldest unconfirmed publish has waited (0 when none waits)."""
        if not self._pending:
            return 0.0
        return time.monotonic() - min(p.sent_at for p in self._pending.values())

    def on_return(self, _channel: Any, method: Any, properties: Any, _body: bytes) -> None:
        # A return comes before the confirm of the message it returns, so that message is still pending: the
        # oldest pending publish to the same queue with the same ids is it (a dead-letter copy may have no
        # message_id, which is why the match is not by message_id alone).
        pending = next((p for p in self._pending.values() if p.matches(method.routing_key, properties)), None)
        log.warning(
            "broker_publish_returned",
            routing_key=method.routing_key,
            reply_code=method.reply_code,
            reply_text=method.reply_text,
        )
        if pending is not None:
            pending.returned = True

    def on_confirm(self, frame: Any) -> None:
        method = frame.method
        confirmed = isinstance(method, pika.spec.Basic.Ack)
        tags = [t for t in self._pending if t <= method.delivery_tag] if method.multiple else [method.delivery_tag]
        for tag in sorted(tags):
            pending = self._pending.pop(tag, None)
            if pending is None:
                continue
            pending.on_done(confirmed, pending.returned)

    def refuse_for_size(self, size: int, limit: int) -> None:
        """The broker closed the channel for one publish over its size limit: that one is told it is too large
        (the publish of exactly `size` bytes, else the largest over `limit`); every other one is lost with the
        channel and its owner publishes it again."""
        pending, self._pending = self._pending, {}
        refused = next((t for t, p in sorted(pending.items()) if p.size == size), None)
        if refused is None:
            over = [(p.size, -t) for t, p in pending.items() if p.size > limit]
            refused = -max(over)[1] if over else None
        for tag, item in sorted(pending.items()):
            if tag == refused and item.on_too_large is not None:
                item.on_too_large(size, limit)
            else:
                item.on_done(False, False)

    def fail_all(self) -> None:
        pending, self._pending = self._pending, {}
        for item in pending.values():
            item.on_done(False, False)


@dataclass(slots=True)
class Watch:
    """The deadlines of one connection; `problem()` names the first one broken, or returns None."""

    confirm_timeout_s: float
    step_bound_s: float
    step: str = ""
    step_started: float = 0.0
    last_delivery: float = field(default_factory=time.monotonic)
    ready_seen_since: float | None = None  # first look that found ready messages with no delivery since
    last_ready_probe: float = 0.0

    def begin(self, step: str) -> None:
        self.step = step
        self.step_started = time.monotonic()

    def setup_done(self) -> None:
        self.step = ""
        self.delivered()

    def delivered(self) -> None:
        self.last_delivery = time.monotonic()
        self.ready_seen_since = None

    def problem(self, *, oldest_unconfirmed_s: float) -> str | None:
        now = time.monotonic()
        if self.step and now - self.step_started > self.step_bound_s:
            return f"setup step {self.step!r} did not finish within {self.step_bound_s:g} s"
        if oldest_unconfirmed_s > self.confirm_timeout_s:
            return f"confirm timeout: a publish waited {oldest_unconfirmed_s:.0f} s for the broker's confirm"
        if self.ready_seen_since is not None and now - self.ready_seen_since > CONSUMER_WATCHDOG_S:
            idle = now - self.ready_seen_since
            return f"consumer idle: nothing delivered for {idle:.0f} s while the queue had ready messages"
        return None

    def wants_ready_probe(self, *, has_room: bool) -> bool:
        """Whether to ask the queue for its ready count now: consuming with room, idle, not asked lately."""
        now = time.monotonic()
        if not has_room or self.step:
            self.ready_seen_since = None
            return False
        if now - self.last_delivery < READY_PROBE_EVERY_S or now - self.last_ready_probe < READY_PROBE_EVERY_S:
            return False
        self.last_ready_probe = now
        return True

    def ready_count(self, count: int, asked_at: float) -> None:
        if count == 0 or self.last_delivery > asked_at:
            self.ready_seen_since = None
        elif self.ready_seen_since is None:
            self.ready_seen_since = asked_at


class ReadyProbe:
    """The request queue's ready count, asked with a passive declare on a channel of its own (kept open)."""

    def __init__(self, queue: str, *, on_count: Callable[[int, float], None], on_gone: Callable[[str], None]) -> None:
        self._queue = queue
        self._on_count = on_count
        self._on_gone = on_gone
        self._channel: Any = None

    def reset(self) -> None:
        self._channel = None

    def ask(self, connection: Any) -> None:
        asked_at = time.monotonic()

        def answered(frame: Any) -> None:
            self._on_count(int(frame.method.message_count), asked_at)

        if self._channel is not None and self._channel.is_open:
            self._channel.queue_declare(queue=self._queue, passive=True, callback=answered)
            return

        def opened(channel: Any) -> None:
            self._channel = channel
            channel.add_on_close_callback(self._closed)
            channel.queue_declare(queue=self._queue, passive=True, callback=answered)

        self._channel = None
        connection.channel(on_open_callback=opened)

    def _closed(self, channel: Any, reason: BaseException) -> None:
        if channel is self._channel:
            self._channel = None
        if getattr(reason, "reply_code", None) == 404:
            self._on_gone(f"queue {self._queue!r} is gone")


def force_close(connection: Any, reason: str) -> None:
    """Drop the TCP connection at once, without the AMQP close handshake.

    A broker that blocks the connection (memory or disk alarm) stops reading it, so a graceful close would
    wait for a CloseOk that never comes. pika does the same for its own blocked-connection timeout."""
    terminate = getattr(connection, "_terminate_stream", None)
    if terminate is None or connection.is_closed:
        return
    terminate(pika.exceptions.AMQPConnectionError(reason))
