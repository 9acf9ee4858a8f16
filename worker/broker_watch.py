"""What keeps the broker link from being alive but idle (contract §4, "A broker that misbehaves").

`Watch`: the deadlines of one connection: each setup step must finish within a bound, a confirm within the
confirm timeout (the confirms themselves are tracked in worker/broker_publish.py), and a consumer with room
must not go without deliveries while its queue has ready messages. Pure bookkeeping on the IOLoop thread:
the link asks it once a second what is wrong, if anything. `ReadyProbe` asks the queue's ready count.
"""

from __future__ import annotations

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
