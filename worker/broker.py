"""The broker connection: connect, declare, consume, reconnect. Knows nothing of the edge.

Everything here runs on the one pika IOLoop thread. Worker threads never touch pika objects: they hand
work back with `IOLoop.add_callback_threadsafe`. SelectConnection (not BlockingConnection) so that
publisher confirms arrive asynchronously: a request is acknowledged when its reply's confirm comes in,
without the loop ever waiting for one. Publishing with confirms (and the broker's size refusal) is in
worker/broker_publish.py; the deadlines that keep the link from being alive but idle in worker/broker_watch.py.
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
from worker.broker_publish import PROBE_ROUTING_KEY, Confirms, PublishChannel
from worker.broker_setup import (
    QueuePlan,
    connection_parameters,
    describe_error,
    root_cause,
    setup_error,
    setup_step_bound,
)
from worker.broker_watch import WATCH_TICK_S, ReadyProbe, Watch, force_close
from worker.config import AmqpConfig, broker_urls, describe_url
from worker.errors import ConfigError

log = structlog.get_logger("worker.broker")


@dataclass(slots=True)
class Delivery:
    """One message taken from the request queue, tied to the channel it came on."""

    channel: Any
    tag: int
    body: bytes = field(repr=False)  # payload bytes never reach a log line, not even pika's debug reprs
    properties: Any
    redelivered: bool


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
        self._consumer_tag: str | None = None
        self._consume_ok = False
        self._outstanding: set[int] = set()  # delivery tags on the consume channel not yet acked or nacked
        self._want_consuming = True
        self._watch = Watch(confirm_timeout_s=amqp.confirm_timeout, step_bound_s=setup_step_bound(amqp))
        self._publisher = PublishChannel(watch=self._watch, on_closed=self._on_work_channel_closed)
        # Publishing is the publish channel's own: the link lends its method (to the Outbox and the setup probe).
        self.publish = self._publisher.publish
        self._ready_probe = ReadyProbe(
            self._plan.queue, on_count=self._watch.ready_count, on_gone=self._close_connection
        )
        self._attempt = 0
        self._closing = False
        self._ready = False
        self._declaring = ""
        self._blocked: str | None = None
        self._lost_reason = "connecting to the broker"
        self._abort_reason: str | None = None
        self.connections_made = 0

    # -- state -------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready

    def why_not_consuming(self) -> str | None:
        """None while the consumer is on and the broker takes publishes; else why not, in a few words."""
        if not self._ready:
            return self._lost_reason
        if self._blocked is not None:
            return f"broker blocked the connection: {self._blocked}"
        if self._consumer_tag is None:
            return "consumer paused"
        if not self._consume_ok:
            return "waiting for the broker's consume-ok"
        return None

    def is_live(self, delivery: Delivery) -> bool:
        """Whether this delivery can still be acknowledged: its channel is the open consume channel."""
        channel = self._consume_channel
        return channel is not None and delivery.channel is channel and bool(channel.is_open)

    # -- connecting --------------------------------------------------------------------------------

    def start(self) -> None:
        self._ioloop.call_later(WATCH_TICK_S, self._watch_tick)
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
        reason, self._abort_reason = self._abort_reason or reason, None
        self._connection = None
        self._consume_channel = None
        self._ready_probe.reset()
        self._consumer_tag = None
        self._consume_ok = False
        self._blocked = None
        self._outstanding.clear()
        self._watch.begin("")
        was_ready, self._ready = self._ready, False
        self._publisher.lost()
        if self._closing:
            self._ioloop.stop()
            return
        self._lost_reason = f"broker connection lost: {reason}" if was_ready or self.connections_made else reason
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
        connection.add_on_connection_blocked_callback(self._on_blocked)
        connection.add_on_connection_unblocked_callback(self._on_unblocked)
        self._watch.begin("setup channel open")
        connection.channel(on_open_callback=self._on_setup_channel_open)

    def _on_blocked(self, _connection: Any, frame: Any) -> None:
        self._blocked = str(getattr(frame.method, "reason", "") or "no reason given")
        log.warning("broker_flow_blocked", reason=self._blocked)

    def _on_unblocked(self, *_: Any) -> None:
        self._blocked = None
        log.info("broker_flow_unblocked")

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
        self._watch.begin(f"queue declare {name}")

        def declared(_frame: Any) -> None:
            self._declare_next(channel, remaining[1:])

        if self._amqp.declare:
            channel.queue_declare(queue=name, durable=True, arguments=self._plan.arguments[name], callback=declared)
        else:
            channel.queue_declare(queue=name, passive=True, callback=declared)

    def _on_setup_channel_closed(self, _channel: Any, reason: BaseException) -> None:
        code = getattr(reason, "reply_code", None)
        if code in (0, 200):  # we closed it: every queue is in place
            assert self._connection is not None
            self._publisher.open(self._connection, then=self._probe_publish)
            return
        name = self._declaring
        text = getattr(reason, "reply_text", str(reason))
        error = setup_error(self._plan, name, code, text)
        if error is None:
            self._close_connection(f"setup channel closed: {code} {text}")
            return
        if self.connections_made == 0:
            self._on_fatal(error)  # at start-up: the configuration is wrong, exit 78
            return
        # Once ready, a queue or permission error is a failover in progress (a node going away, a policy being
        # applied, an operator fixing permissions): keep trying, with backoff, and say why.
        log.error("broker_setup_failed", queue=name, reply_code=code, error=str(error))
        self._close_connection(f"setup failed on queue {name!r}: {code} {text}")

    def _probe_publish(self) -> None:
        # Consume only once the broker confirms a publish: a broker that blocks publishers would otherwise hand
        # us deliveries whose replies cannot be confirmed, and every reconnect would cost them a delivery count.
        self._watch.begin("probe publish confirm")

        def confirmed(ok: bool, _returned: bool) -> None:
            if ok and self._publisher.channel is not None:
                self._open_consume_channel()

        self.publish(routing_key=PROBE_ROUTING_KEY, body=b"", properties=pika.BasicProperties(), on_done=confirmed)

    def _open_consume_channel(self) -> None:
        assert self._connection is not None
        self._watch.begin("consume channel open")
        self._connection.channel(on_open_callback=self._on_consume_channel_open)

    def _on_consume_channel_open(self, channel: Any) -> None:
        self._consume_channel = channel
        self._outstanding.clear()
        channel.add_on_close_callback(self._on_work_channel_closed)
        channel.add_on_cancel_callback(self._on_broker_cancel)
        self._watch.begin("basic qos")
        channel.basic_qos(prefetch_count=self._prefetch, callback=self._on_qos_ok)

    def _on_qos_ok(self, _frame: Any) -> None:
        self._attempt = 0
        self._ready = True
        self._watch.setup_done()
        self.connections_made += 1
        log.info(
            "broker_ready",
            url=describe_url(self._amqp.url[self._url_index]),
            queue=self._plan.queue,
            prefetch=self._prefetch,
        )
        self._on_ready()  # first: the daemon pauses the consumer here while the edge is down or it drains
        if self._want_consuming:
            self._start_consuming()

    def _on_work_channel_closed(self, channel: Any, reason: BaseException) -> None:
        if self._closing and channel is self._consume_channel:
            return
        connection = self._connection
        if connection is not None and self._publisher.refused_for_size(channel, reason):
            # One reply over the broker's max_message_size: the consume channel, and with it every delivery we
            # hold, stays as it is; only the publish channel is opened again.
            if connection.is_open:
                self._publisher.open(connection, then=self._watch.setup_done)
            return
        # A closed channel makes every delivery tag on it void: the simplest correct recovery is a new
        # connection, on which the broker redelivers what we had not acknowledged.
        self._close_connection(f"channel closed: {describe_error(reason)}")

    def _on_broker_cancel(self, _frame: Any) -> None:
        # The broker cancels a consumer when its queue is deleted or moves (quorum leader change).
        self._consumer_tag = None
        self._close_connection("consumer cancelled by the broker")

    def _close_connection(self, reason: str, *, force: bool = False) -> None:
        connection = self._connection
        if self._closing or connection is None or connection.is_closed or (connection.is_closing and not force):
            return
        log.warning("broker_reconnecting", reason=reason)
        self._abort_reason = self._abort_reason or reason
        if force or not connection.is_open:
            force_close(connection, reason)
            return
        connection.close(reply_code=320, reply_text=reason[:200])
        # A broker that stopped reading (blocked) never answers the close: drop the socket after a while.
        self._ioloop.call_later(5.0, lambda: force_close(connection, reason) if not connection.is_closed else None)

    # -- the watch -----------------------------------------------------------------------------------

    def _watch_tick(self) -> None:
        if self._closing:
            return
        self._ioloop.call_later(WATCH_TICK_S, self._watch_tick)
        connection = self._connection
        if connection is None or not connection.is_open:
            return
        problem = self._watch.problem(oldest_unconfirmed_s=self._publisher.oldest_unconfirmed_s())
        if problem is not None:
            log.error("broker_link_stuck", problem=problem)
            self._lost_reason = problem
            self._close_connection(problem, force=True)
            return
        consuming = self._consume_ok and self._consumer_tag is not None
        if consuming and self._watch.wants_ready_probe(has_room=len(self._outstanding) < self._prefetch):
            self._ready_probe.ask(connection)

    # -- consuming ---------------------------------------------------------------------------------

    def _start_consuming(self) -> None:
        channel = self._consume_channel
        if channel is None or not channel.is_open or self._consumer_tag is not None:
            return
        self._consume_ok = False
        self._watch.begin("consume-ok")

        def consume_ok(_frame: Any) -> None:
            self._consume_ok = True
            self._watch.setup_done()

        self._consumer_tag = channel.basic_consume(self._plan.queue, self._deliver, auto_ack=False, callback=consume_ok)
        log.info("broker_consuming", queue=self._plan.queue)

    def _deliver(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        if channel is self._consume_channel:
            self._outstanding.add(method.delivery_tag)
        self._watch.delivered()
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
        self._consume_ok = False
        if self._watch.step == "consume-ok":
            self._watch.setup_done()
        if channel is not None and channel.is_open and tag is not None:
            channel.basic_cancel(tag)
            log.info("broker_consumer_paused", queue=self._plan.queue)

    def ack(self, delivery: Delivery) -> bool:
        if not self.is_live(delivery):
            return False
        delivery.channel.basic_ack(delivery.tag)
        self._outstanding.discard(delivery.tag)
        return True

    def requeue(self, delivery: Delivery) -> bool:
        if not self.is_live(delivery):
            return False
        delivery.channel.basic_nack(delivery.tag, requeue=True)
        self._outstanding.discard(delivery.tag)
        return True

    # -- shutting down -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection and stop the IOLoop once it is closed (or at once when there is none)."""
        if self._closing:
            return
        self._closing = True
        connection = self._connection
        if connection is not None and connection.is_open:
            connection.close()
        else:  # none, or still opening (pika 1.x has no is_opening: that check raised AttributeError)
            self._ioloop.stop()


__all__ = ["BrokerLink", "Confirms", "Delivery", "QueuePlan", "connection_parameters", "describe_error", "root_cause"]
