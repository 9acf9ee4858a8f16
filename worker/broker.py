"""The broker connection: declare, consume, publish with confirms, reconnect. Knows nothing of the edge.

Everything here runs on the one pika IOLoop thread. Worker threads never touch pika objects: they hand
work back with `IOLoop.add_callback_threadsafe`. SelectConnection (not BlockingConnection) so that
publisher confirms arrive asynchronously: a request is acknowledged when its reply's confirm comes in,
without the loop ever waiting for one.
"""

from __future__ import annotations

import itertools
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
import structlog
from pika.adapters.select_connection import IOLoop

from worker.backoff import backoff_delay
from worker.broker_setup import QueuePlan, connection_parameters, describe_error, root_cause
from worker.config import AmqpConfig, broker_urls, describe_url
from worker.errors import ConfigError, QueueMismatch

log = structlog.get_logger("worker.broker")


@dataclass(slots=True)
class Delivery:
    """One message taken from the request queue, tied to the channel it came on."""

    channel: Any
    tag: int
    body: bytes = field(repr=False)  # payload bytes never reach a log line, not even pika's debug reprs
    properties: Any
    redelivered: bool


@dataclass(slots=True)
class _Pending:
    on_done: Callable[[bool, bool], None]
    routing_key: str
    message_id: str | None
    correlation_id: str | None
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

    def reset(self) -> None:
        """A new channel numbers its publishes from 1 again."""
        self._publish_seq = 0
        self._pending.clear()

    def add(self, on_done: Callable[[bool, bool], None], routing_key: str, properties: Any) -> None:
        self._publish_seq += 1
        self._pending[self._publish_seq] = _Pending(
            on_done, routing_key, properties.message_id, properties.correlation_id
        )

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

    def fail_all(self) -> None:
        pending, self._pending = self._pending, {}
        for item in pending.values():
            item.on_done(False, False)


class BrokerLink:
    """One logical link to the broker that survives connection loss: it reconnects for ever, with backoff."""

    def __init__(
        self,
        *,
        ioloop: IOLoop,
        amqp: AmqpConfig,
        prefetch: int,
        on_message: Callable[[Delivery], None],
        on_ready: Callable[[], None],
        on_lost: Callable[[str], None],
        on_fatal: Callable[[Exception], None],
    ) -> None:
        self._ioloop = ioloop
        self._amqp = amqp
        self._plan = QueuePlan.from_config(amqp)
        self._prefetch = prefetch
        self._on_message = on_message
        self._on_ready = on_ready
        self._on_lost = on_lost
        self._on_fatal = on_fatal
        self._urls = broker_urls(amqp)
        self._url_cycle = itertools.cycle(range(len(self._urls)))
        self._url_index = 0
        self._connection: pika.SelectConnection | None = None
        self._consume_channel: Any = None
        self._publish_channel: Any = None
        self._consumer_tag: str | None = None
        self._want_consuming = True
        self._confirms = Confirms()
        self._attempt = 0
        self._closing = False
        self._ready = False
        self._declaring = ""
        self.connections_made = 0

    # -- state -------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready

    def is_live(self, delivery: Delivery) -> bool:
        """Whether this delivery can still be acknowledged: its channel is the open consume channel."""
        channel = self._consume_channel
        return channel is not None and delivery.channel is channel and bool(channel.is_open)

    # -- connecting --------------------------------------------------------------------------------

    def start(self) -> None:
        self._connect()

    def _connect(self) -> None:
        if self._closing:
            return
        self._url_index = next(self._url_cycle)
        url = self._urls[self._url_index]
        self._attempt += 1
        log.info("broker_connecting", url=describe_url(self._amqp.url[self._url_index]), attempt=self._attempt)
        try:
            params = connection_parameters(self._amqp, url)
        except (ValueError, OSError, ssl.SSLError) as exc:
            self._on_fatal(ConfigError(f"amqp.url / amqp.tls_*: cannot build connection parameters: {exc}"))
            return
        self._connection = pika.SelectConnection(
            params,
            on_open_callback=self._on_connection_open,
            on_open_error_callback=self._on_connection_open_error,
            on_close_callback=self._on_connection_closed,
            custom_ioloop=self._ioloop,
        )

    def _schedule_reconnect(self, reason: str) -> None:
        self._connection = None
        self._consume_channel = None
        self._publish_channel = None
        self._consumer_tag = None
        was_ready, self._ready = self._ready, False
        self._confirms.fail_all()
        if self._closing:
            self._ioloop.stop()
            return
        delay = backoff_delay(self._attempt, base_s=0.5, cap_s=30.0) + 0.1
        log.warning(
            "broker_connection_lost" if was_ready else "broker_connect_failed",
            reason=reason,
            retry_in_s=round(delay, 2),
        )
        self._on_lost(reason)
        self._ioloop.call_later(delay, self._connect)

    def _on_connection_open_error(self, _connection: Any, error: BaseException) -> None:
        self._schedule_reconnect(describe_error(error))

    def _on_connection_closed(self, _connection: Any, reason: BaseException) -> None:
        self._schedule_reconnect(describe_error(reason))

    def _on_connection_open(self, connection: Any) -> None:
        connection.add_on_connection_blocked_callback(lambda *_: log.warning("broker_flow_blocked"))
        connection.add_on_connection_unblocked_callback(lambda *_: log.info("broker_flow_unblocked"))
        connection.channel(on_open_callback=self._on_setup_channel_open)

    def _on_setup_channel_open(self, channel: Any) -> None:
        channel.add_on_close_callback(self._on_setup_channel_closed)
        queues = list(self._plan.arguments)
        self._declare_next(channel, queues)

    def _declare_next(self, channel: Any, remaining: list[str]) -> None:
        if not remaining:
            channel.close()
            return
        name = remaining[0]
        self._declaring = name

        def declared(_frame: Any) -> None:
            self._declare_next(channel, remaining[1:])

        if self._amqp.declare:
            channel.queue_declare(queue=name, durable=True, arguments=self._plan.arguments[name], callback=declared)
        else:
            channel.queue_declare(queue=name, passive=True, callback=declared)

    def _on_setup_channel_closed(self, _channel: Any, reason: BaseException) -> None:
        code = getattr(reason, "reply_code", None)
        if code in (0, 200):  # we closed it: every queue is in place
            self._open_publish_channel()
            return
        name = self._declaring
        text = getattr(reason, "reply_text", str(reason))
        if code == 406:
            self._on_fatal(
                QueueMismatch(
                    f"queue {name!r} exists with other arguments than configured: wanted durable with "
                    f"{self._plan.arguments[name]}; the broker answered: {text}. Delete the queue or change "
                    "the amqp.* settings to match it"
                )
            )
        elif code == 404:
            self._on_fatal(
                ConfigError(
                    f"queue {name!r} does not exist and amqp.declare is false: declare it, or set amqp.declare = true"
                )
            )
        elif code in (403, 530):
            self._on_fatal(ConfigError(f"queue {name!r}: access refused by the broker: {text}"))
        else:
            self._close_connection(f"setup channel closed: {code} {text}")

    def _open_publish_channel(self) -> None:
        assert self._connection is not None
        self._connection.channel(on_open_callback=self._on_publish_channel_open)

    def _on_publish_channel_open(self, channel: Any) -> None:
        self._publish_channel = channel
        self._confirms.reset()
        channel.add_on_close_callback(self._on_work_channel_closed)
        channel.add_on_return_callback(self._confirms.on_return)
        channel.confirm_delivery(
            ack_nack_callback=self._confirms.on_confirm, callback=lambda _f: self._open_consume_channel()
        )

    def _open_consume_channel(self) -> None:
        assert self._connection is not None
        self._connection.channel(on_open_callback=self._on_consume_channel_open)

    def _on_consume_channel_open(self, channel: Any) -> None:
        self._consume_channel = channel
        channel.add_on_close_callback(self._on_work_channel_closed)
        channel.add_on_cancel_callback(self._on_broker_cancel)
        channel.basic_qos(prefetch_count=self._prefetch, callback=self._on_qos_ok)

    def _on_qos_ok(self, _frame: Any) -> None:
        self._attempt = 0
        self._ready = True
        self.connections_made += 1
        log.info(
            "broker_ready",
            url=describe_url(self._amqp.url[self._url_index]),
            queue=self._plan.queue,
            prefetch=self._prefetch,
        )
        if self._want_consuming:
            self._start_consuming()
        self._on_ready()

    def _on_work_channel_closed(self, channel: Any, reason: BaseException) -> None:
        # A closed channel makes every delivery tag on it void: the simplest correct recovery is a new
        # connection, on which the broker redelivers what we had not acknowledged.
        if self._closing and channel is self._consume_channel:
            return
        self._close_connection(f"channel closed: {describe_error(reason)}")

    def _on_broker_cancel(self, _frame: Any) -> None:
        # The broker cancels a consumer when its queue is deleted or moves (quorum leader change).
        self._consumer_tag = None
        self._close_connection("consumer cancelled by the broker")

    def _close_connection(self, reason: str) -> None:
        connection = self._connection
        if connection is not None and connection.is_open:
            log.warning("broker_reconnecting", reason=reason)
            connection.close(reply_code=320, reply_text=reason[:200])

    # -- consuming ---------------------------------------------------------------------------------

    def _start_consuming(self) -> None:
        channel = self._consume_channel
        if channel is None or not channel.is_open or self._consumer_tag is not None:
            return
        self._consumer_tag = channel.basic_consume(self._plan.queue, self._deliver, auto_ack=False)
        log.info("broker_consuming", queue=self._plan.queue)

    def _deliver(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self._on_message(Delivery(channel, method.delivery_tag, body, properties, bool(method.redelivered)))

    def resume_consuming(self) -> None:
        self._want_consuming = True
        if self._ready:
            self._start_consuming()

    def pause_consuming(self) -> None:
        """Stop taking deliveries; those already taken stay ours to finish or hand back."""
        self._want_consuming = False
        channel, tag = self._consume_channel, self._consumer_tag
        self._consumer_tag = None
        if channel is not None and channel.is_open and tag is not None:
            channel.basic_cancel(tag)
            log.info("broker_consumer_paused", queue=self._plan.queue)

    def ack(self, delivery: Delivery) -> bool:
        if not self.is_live(delivery):
            return False
        delivery.channel.basic_ack(delivery.tag)
        return True

    def requeue(self, delivery: Delivery) -> bool:
        if not self.is_live(delivery):
            return False
        delivery.channel.basic_nack(delivery.tag, requeue=True)
        return True

    # -- publishing --------------------------------------------------------------------------------

    def publish(
        self,
        *,
        routing_key: str,
        body: bytes,
        properties: pika.BasicProperties,
        on_done: Callable[[bool, bool], None],
    ) -> bool:
        """Publish through the default exchange, mandatory and persistent; on_done(confirmed, returned) follows.

        Returns False (and never calls on_done) when there is no open channel to publish on.
        """
        channel = self._publish_channel
        if channel is None or not channel.is_open:
            return False
        channel.basic_publish("", routing_key, body, properties, mandatory=True)
        self._confirms.add(on_done, routing_key, properties)
        return True

    # -- shutting down -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection and stop the IOLoop once it is closed (or at once when there is none)."""
        if self._closing:
            return
        self._closing = True
        connection = self._connection
        if connection is not None and (connection.is_open or connection.is_opening):
            if connection.is_open:
                connection.close()
            else:
                self._ioloop.stop()
        else:
            self._ioloop.stop()


__all__ = ["BrokerLink", "Delivery", "QueuePlan", "connection_parameters", "describe_error", "root_cause"]
