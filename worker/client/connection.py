"""The producer's one broker connection, owned by one background IO thread that reconnects by itself.

A pika SelectConnection on its own IOLoop, in a thread of its own: confirms and replies arrive as events,
so many requests are in flight at once and none waits for another's confirm (a BlockingConnection's
`basic_publish` blocks on each confirm in turn, and would need a pump thread anyway to receive replies).
Callers never touch pika objects: they hand work in with `IOLoop.add_callback_threadsafe`, the only
thread-safe call of pika, and wait on a `threading.Event`.

The reply queue is server-named, durable, with an `x-expires` lease (not exclusive, not auto-delete): it
outlives a dropped connection, and after a reconnect the client consumes the same queue again. Replies are
acknowledged only after `on_reply` has taken them, so a reply in flight when the connection drops is
redelivered (and dropped as a duplicate if it had been taken). Requests whose confirm had not come when
the connection dropped are published again, in order, with the same message_id: the worker is
idempotent per message_id, so at most one edge job results.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
import structlog
from pika.adapters.select_connection import IOLoop

from worker.backoff import backoff_delay
from worker.broker import describe_error
from worker.client.job import BrokerUnreachable, ClientClosed, PublishError, RequestUnroutable

log = structlog.get_logger("worker.client")

RECONNECT_CAP_S = 5.0
QUEUE_NOT_FOUND = 404


@dataclass(slots=True)
class Outgoing:
    """One request between `submit` and the broker's confirm."""

    seq: int
    queue: str
    message_id: str
    correlation_id: str
    body: bytes = field(repr=False)  # payload bytes never reach a log line
    reply_to: str | None = None  # None: this client's reply queue
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    returned: bool = False
    sends: int = 0


class Link:
    """The IO thread and everything it owns. Public methods are thread-safe; `_`-methods run on the loop."""

    def __init__(
        self,
        parameters: list[pika.ConnectionParameters],
        described: list[str],
        *,
        on_reply: Callable[[Any, bytes], None],
        on_stopped: Callable[[], None],
        reply_queue_expires_s: float,
        prefetch: int,
    ) -> None:
        self._parameters = parameters
        self._described = described
        self._on_reply = on_reply
        self._on_stopped = on_stopped
        self._expires_ms = max(1000, int(reply_queue_expires_s * 1000))
        self._prefetch = prefetch
        self._ioloop = IOLoop()
        self._thread = threading.Thread(target=self._run, name="edge-worker-client-io", daemon=True)
        self._seq = itertools.count(1)
        self._lock = threading.Lock()  # guards _closed against submit racing close
        self._closed = False
        self.ready = threading.Event()  # set while a session is ready to publish and consume
        self.first_ready = threading.Event()
        self._settled = threading.Event()  # first ready, or every URL refused at start-up
        self._startup_failures = 0
        self.stopped = threading.Event()
        self.last_error = "not connected yet"
        self.reply_queue: str | None = None
        self.reconnects = 0
        self.republished = 0
        self.reply_queues_lost = 0
        # Loop-thread state.
        self._connection: pika.SelectConnection | None = None
        self._channel: Any = None
        self._url_index = 0
        self._attempt = 0
        self._outbox: dict[int, Outgoing] = {}  # unconfirmed, in submission order
        self._by_tag: dict[int, Outgoing] = {}  # this channel's delivery tags
        self._next_tag = 0
        self._closing = False
        self._passive_declare = False

    # -- thread-safe API ----------------------------------------------------------------------------

    def start(self, connect_timeout_s: float) -> None:
        """Connect; return once a session is ready, or raise when every URL failed once or the timeout passed."""
        self._thread.start()
        self._settled.wait(connect_timeout_s)
        if not self.first_ready.is_set():
            self.close()
            brokers = ", ".join(self._described)
            raise BrokerUnreachable(f"broker {brokers} unreachable ({self.last_error})")

    def new_outgoing(
        self, queue: str, message_id: str, correlation_id: str, body: bytes, reply_to: str | None = None
    ) -> Outgoing:
        return Outgoing(next(self._seq), queue, message_id, correlation_id, body, reply_to)

    def publish(self, out: Outgoing, timeout_s: float) -> None:
        """Hand one request to the loop and wait for the broker's confirm; raise what went wrong."""
        with self._lock:
            if self._closed or self.stopped.is_set():
                raise ClientClosed("the client is closed")
            self._ioloop.add_callback_threadsafe(lambda: self._enqueue(out))
        if not out.done.wait(timeout_s):
            self._ioloop.add_callback_threadsafe(lambda: self._outbox.pop(out.seq, None))
            raise PublishError(
                f"the broker did not confirm the request for queue {out.queue!r} within {timeout_s:g} s "
                f"(connection: {'ready' if self.ready.is_set() else self.last_error}); publishing again with "
                f"message_id={out.message_id!r} is safe"
            )
        if out.error is not None:
            raise out.error

    def close(self, timeout_s: float = 10.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._thread.is_alive():
                self._ioloop.add_callback_threadsafe(self._shutdown)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def connection_name(self) -> str:
        props = self._parameters[0].client_properties or {}
        return str(props.get("connection_name", ""))

    # -- the loop -----------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._connect()
            self._ioloop.start()
        except Exception:  # a bug must not leave callers waiting on a dead thread
            log.exception("client_io_thread_failed")
        finally:
            self._fail_outbox(ClientClosed("the client was closed"))
            self.ready.clear()
            self.stopped.set()
            self._on_stopped()  # wake every caller still waiting for a reply
            self._ioloop.close()

    def _connect(self) -> None:
        if self._closing:
            return
        self._connection = pika.SelectConnection(
            self._parameters[self._url_index],
            on_open_callback=self._on_open,
            on_open_error_callback=self._on_open_error,
            on_close_callback=self._on_closed,
            custom_ioloop=self._ioloop,
        )

    def _schedule_reconnect(self, reason: str) -> None:
        self.ready.clear()
        self._channel = None
        self._by_tag.clear()
        if self._closing:
            self._ioloop.stop()
            return
        self._attempt += 1
        self._url_index = (self._url_index + 1) % len(self._parameters)
        delay = backoff_delay(self._attempt, cap_s=RECONNECT_CAP_S)
        self.last_error = reason
        log.warning(
            "client_broker_reconnecting",
            reason=reason,
            attempt=self._attempt,
            delay_s=round(delay, 3),
            url=self._described[self._url_index],
            unconfirmed=len(self._outbox),
        )
        self._ioloop.call_later(delay, self._connect)

    def _on_open_error(self, _connection: Any, error: BaseException) -> None:
        reason = f"connect failed: {describe_error(error)}"
        if not self.first_ready.is_set():
            self._startup_failures += 1
            if self._startup_failures >= len(self._parameters):
                self.last_error = reason  # at start-up, a broker nobody can reach is the caller's to handle
                self._settled.set()
                return
        self._schedule_reconnect(reason)

    def _on_closed(self, _connection: Any, reason: BaseException) -> None:
        self._connection = None
        if self._closing:
            self.ready.clear()
            self._ioloop.stop()
            return
        self.reconnects += 1
        self._schedule_reconnect(f"connection lost: {describe_error(reason)}")

    def _on_open(self, connection: Any) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_channel_open(self, channel: Any) -> None:
        self._channel = channel
        self._by_tag.clear()
        self._next_tag = 0
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.add_on_cancel_callback(self._on_consumer_cancelled)
        channel.confirm_delivery(self._on_confirm, callback=lambda _frame: self._on_confirm_ok(channel))

    def _on_confirm_ok(self, channel: Any) -> None:
        channel.basic_qos(prefetch_count=self._prefetch, callback=lambda _frame: self._declare_reply_queue(channel))

    def _declare_reply_queue(self, channel: Any) -> None:
        if self.reply_queue is not None:
            # A server-named queue cannot be declared again by name (reserved amq. prefix): check it is there.
            self._passive_declare = True
            channel.queue_declare(self.reply_queue, passive=True, callback=lambda f: self._on_reply_queue(channel, f))
            return
        channel.queue_declare(
            "",
            durable=True,
            exclusive=False,
            auto_delete=False,
            arguments={"x-expires": self._expires_ms, "x-queue-type": "classic"},
            callback=lambda frame: self._on_reply_queue(channel, frame),
        )

    def _on_reply_queue(self, channel: Any, frame: Any) -> None:
        self._passive_declare = False
        self.reply_queue = frame.method.queue
        channel.basic_consume(self.reply_queue, self._on_message, auto_ack=False, callback=self._on_consuming)

    def _on_consuming(self, _frame: Any) -> None:
        if self._attempt:
            log.info("client_broker_ready", url=self._described[self._url_index], republishing=len(self._outbox))
        self._attempt = 0
        self.last_error = ""
        self.ready.set()
        self.first_ready.set()
        self._settled.set()
        for out in list(self._outbox.values()):
            if out.sends:
                self.republished += 1
            self._send(out)

    def _on_channel_closed(self, _channel: Any, reason: BaseException) -> None:
        self.ready.clear()
        self._by_tag.clear()
        self._channel = None
        if self._closing or self._connection is None or not self._connection.is_open:
            return
        code = getattr(reason, "reply_code", None)
        if self._passive_declare and code == QUEUE_NOT_FOUND:
            # The reply queue expired while we were away: its replies are gone; start a new one.
            self._passive_declare = False
            self.reply_queue = None
            self.reply_queues_lost += 1
            log.warning("client_reply_queue_lost", reason=str(reason))
            self._connection.channel(on_open_callback=self._on_channel_open)
            return
        self.last_error = f"channel closed: {reason}"
        self._connection.close()  # reconnect from scratch, with backoff

    def _on_consumer_cancelled(self, _frame: Any) -> None:
        # The broker cancelled our consumer: the reply queue was deleted (or its node went away). Without a
        # consumer no reply would ever arrive: start over, which finds out whether the queue is still there.
        if self._closing or self._connection is None or not self._connection.is_open:
            return
        log.warning("client_reply_consumer_cancelled", reply_queue=self.reply_queue)
        self.last_error = "the broker cancelled the reply consumer"
        self._connection.close()

    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self._on_reply(properties, body)
        channel.basic_ack(method.delivery_tag)

    # -- publishing ---------------------------------------------------------------------------------

    def _enqueue(self, out: Outgoing) -> None:
        if self._closing:
            out.error = ClientClosed("the client was closed")
            out.done.set()
            return
        self._outbox[out.seq] = out
        if self.ready.is_set() and self._channel is not None:
            self._send(out)

    def _send(self, out: Outgoing) -> None:
        assert self.reply_queue is not None
        out.sends += 1
        out.returned = False
        self._channel.basic_publish(
            "",
            out.queue,
            out.body,
            pika.BasicProperties(
                content_type="application/msgpack",
                delivery_mode=2,
                message_id=out.message_id,
                correlation_id=out.correlation_id,
                reply_to=out.reply_to or self.reply_queue,
            ),
            mandatory=True,
        )
        self._next_tag += 1
        self._by_tag[self._next_tag] = out

    def _on_return(self, _channel: Any, _method: Any, properties: Any, _body: bytes) -> None:
        # The broker sends basic.return before the basic.ack of an unroutable mandatory message.
        for out in self._by_tag.values():
            if not out.returned and out.message_id == properties.message_id:
                out.returned = True
                return

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tag = method.delivery_tag
        tags = [t for t in self._by_tag if t <= tag] if method.multiple else [tag]
        nack = isinstance(method, pika.spec.Basic.Nack)
        for t in tags:
            out = self._by_tag.pop(t, None)
            if out is None or self._outbox.pop(out.seq, None) is None:
                continue  # abandoned by a caller that stopped waiting
            if nack:
                out.error = PublishError(f"the broker refused the request for queue {out.queue!r} (nack)")
            elif out.returned:
                out.error = RequestUnroutable(
                    f"no queue {out.queue!r} on the broker: start the worker (it declares its queues) or check "
                    "the queue name (amqp.queue)"
                )
            out.done.set()

    def _fail_outbox(self, error: BaseException) -> None:
        for out in self._outbox.values():
            out.error = error
            out.done.set()
        self._outbox.clear()

    def _shutdown(self) -> None:
        self._closing = True
        self._fail_outbox(ClientClosed("the client was closed"))
        connection = self._connection
        if connection is None or connection.is_closing or connection.is_closed:
            self._ioloop.stop()
            return
        if not connection.is_open:
            self._ioloop.stop()  # still opening: nothing to close politely
            return
        channel = self._channel
        if channel is not None and channel.is_open and self.reply_queue is not None:
            # Nobody will consume it again: delete it now instead of leaving it to its expiry.
            channel.queue_delete(self.reply_queue, callback=lambda _frame: self._close_connection())
            self._ioloop.call_later(2.0, self._close_connection)
        else:
            self._close_connection()

    def _close_connection(self) -> None:
        connection = self._connection
        if connection is None or connection.is_closing or connection.is_closed:
            return
        try:
            connection.close()
        except pika.exceptions.ConnectionWrongStateError:
            self._ioloop.stop()
