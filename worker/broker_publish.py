"""Publishing with confirms: the link's publish channel, which confirm, return or size refusal belongs to
which publish, and how old the oldest unconfirmed one is (the link drops a connection whose confirm never
comes, after `amqp.confirm_timeout`: worker/broker_watch.py).

Everything here runs on the IOLoop thread. A reply the broker refuses for its size (a 406 that closes the
publish channel) goes back to its owner as too large; the other publishes of that channel are lost with it
and published again by their owners, and the consume channel, with every delivery we hold, stays open.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
import structlog

from worker.broker_watch import Watch

log = structlog.get_logger("worker.broker")

# The setup's probe publish: the default exchange never routes to an "amq." name (clients cannot declare
# one), so the broker confirms it at once, unless it blocks publishers (a memory or disk alarm).
PROBE_ROUTING_KEY = "amq.edge-worker.probe"

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


class PublishChannel:
    """The link's publish channel in confirm mode: publish through the default exchange, tell each publish's
    owner its confirm, return or size refusal."""

    def __init__(self, *, watch: Watch, on_closed: Callable[[Any, BaseException], None]) -> None:
        self._watch = watch
        self._on_closed = on_closed
        self._channel: Any = None
        self._confirms = Confirms()

    @property
    def channel(self) -> Any:
        """The open (or opening) publish channel; None while there is none."""
        return self._channel

    def open(self, connection: Any, *, then: Callable[[], None]) -> None:
        """Open a channel on `connection`, put it in confirm mode, then call `then`."""
        self._watch.begin("publish channel open")

        def opened(channel: Any) -> None:
            self._channel = channel
            self._confirms.reset()
            channel.add_on_close_callback(self._on_closed)
            channel.add_on_return_callback(self._confirms.on_return)
            self._watch.begin("confirm select")
            channel.confirm_delivery(ack_nack_callback=self._confirms.on_confirm, callback=lambda _f: then())

        connection.channel(on_open_callback=opened)

    def publish(
        self,
        *,
        routing_key: str,
        body: bytes,
        properties: pika.BasicProperties,
        on_done: Callable[[bool, bool], None],
        on_too_large: Callable[[int, int], None] | None = None,
    ) -> bool:
        """Publish through the default exchange, mandatory and persistent; on_done(confirmed, returned) follows,
        or on_too_large(size, limit) when the broker refused the message for its size.

        Returns False (and never calls on_done) when there is no open channel to publish on.
        """
        channel = self._channel
        if channel is None or not channel.is_open:
            return False
        mandatory = routing_key != PROBE_ROUTING_KEY
        channel.basic_publish("", routing_key, body, properties, mandatory=mandatory)
        self._confirms.add(on_done, routing_key, properties, size=len(body), on_too_large=on_too_large)
        return True

    def refused_for_size(self, channel: Any, reason: BaseException) -> bool:
        """Whether the broker closed this publish channel for one message over its max_message_size; if so, that
        publish's owner is told it is too large and every other publish of the channel fails."""
        refused = size_refusal(reason)
        if refused is None or channel is not self._channel:
            return False
        log.error("broker_refused_message_size", size=refused[0], max_size=refused[1])
        self._channel = None
        self._confirms.refuse_for_size(*refused)
        return True

    def lost(self) -> None:
        """The connection is gone: every unconfirmed publish fails (its owner publishes it again)."""
        self._channel = None
        self._confirms.fail_all()

    def oldest_unconfirmed_s(self) -> float:
        """Seconds the oldest unconfirmed publish has waited (0 when none waits)."""
        return self._confirms.oldest_age()


__all__ = ["PROBE_ROUTING_KEY", "Confirms", "PublishChannel", "size_refusal"]
