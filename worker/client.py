"""A small producer API that mirrors the edge SDK: publish a request, optionally wait for its final reply."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

import msgpack
import pika
import pika.exceptions

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


class ReplyTimeout(TimeoutError):
    """No final reply arrived in time."""


class PublishError(RuntimeError):
    """The broker did not take the request."""


class RequestUnroutable(PublishError):
    """No queue of that name on the broker: the request was returned."""


class _RedactReturnedBody(logging.Filter):
    """pika logs the first 255 bytes of a returned message's body at WARNING: keep the payload out of logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Published message was returned") and isinstance(record.args, tuple):
            record.args = (*record.args[:-1], "<body not logged>")
        return True


_REDACT_RETURNED_BODY = _RedactReturnedBody()


def _keep_returned_bodies_out_of_logs() -> None:
    logger = logging.getLogger("pika.adapters.blocking_connection")
    if _REDACT_RETURNED_BODY not in logger.filters:
        logger.addFilter(_REDACT_RETURNED_BODY)


class EdgeWorkerClient:
    """Publishes job requests to the request queue and collects replies on a private reply queue.

    Not thread-safe (one BlockingConnection); make one client per thread.
    """

    def __init__(self, url: str = DEFAULT_URL, *, queue: str = "edge.jobs") -> None:
        _keep_returned_bodies_out_of_logs()
        self._connection = pika.BlockingConnection(pika.URLParameters(url))
        self._channel = self._connection.channel()
        self._channel.confirm_delivery()
        self.queue = queue
        declared = self._channel.queue_declare(queue="", exclusive=True, auto_delete=True)
        self.reply_queue: str = declared.method.queue
        self._replies: dict[str, list[dict[str, Any]]] = {}
        self._channel.basic_consume(self.reply_queue, self._on_reply, auto_ack=True)

    def __enter__(self) -> EdgeWorkerClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._connection.is_open:
            self._connection.close()

    def _on_reply(self, _channel: Any, _method: Any, properties: Any, body: bytes) -> None:
        reply = msgpack.unpackb(body, raw=False)
        self._replies.setdefault(properties.correlation_id or "", []).append(reply)

    def publish(
        self,
        request: Mapping[str, Any],
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
    ) -> str:
        """Publish one request (persistent, confirmed); returns its correlation id.

        Raises RequestUnroutable when the request queue does not exist, PublishError when the broker nacks.
        """
        message_id = message_id or uuid.uuid4().hex
        correlation_id = correlation_id or message_id
        try:
            self._channel.basic_publish(
                "",
                self.queue,
                msgpack.packb(dict(request), use_bin_type=True),
                pika.BasicProperties(
                    content_type="application/msgpack",
                    delivery_mode=2,
                    message_id=message_id,
                    correlation_id=correlation_id,
                    reply_to=reply_to or self.reply_queue,
                ),
                mandatory=True,
            )
        except pika.exceptions.UnroutableError:
            raise RequestUnroutable(
                f"no queue {self.queue!r} on the broker: start the worker (it declares its queues) or check amqp.queue"
            ) from None
        except pika.exceptions.NackError:
            raise PublishError(f"the broker refused the request for queue {self.queue!r} (nack)") from None
        return correlation_id

    def wait(self, correlation_id: str, *, timeout_s: float = 60.0) -> dict[str, Any]:
        """Wait for the final reply to a request published with this client's reply queue."""
        deadline = time.monotonic() + timeout_s
        while True:
            for reply in self._replies.get(correlation_id, []):
                if reply.get("final"):
                    self._replies.pop(correlation_id, None)
                    return reply
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ReplyTimeout(f"no final reply for {correlation_id} within {timeout_s:g} s")
            self._connection.process_data_events(time_limit=min(remaining, 1.0))

    def submit_embedded(
        self,
        identifier: str,
        version: str,
        sources: Mapping[str, Any],
        explain: bool = False,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
        wait_s: float | None = 60.0,
    ) -> dict[str, Any] | str:
        """Like the SDK's submit_embedded: returns the final reply, or the correlation id with wait_s=None."""
        request: dict[str, Any] = {
            "model": {"identifier": identifier, "version": version},
            "sources": dict(sources),
            "explain": explain,
        }
        if timeout is not None:
            request["timeout"] = timeout
        if request_id is not None:
            request["request_id"] = request_id
        correlation_id = self.publish(request)
        if wait_s is None:
            return correlation_id
        return self.wait(correlation_id, timeout_s=wait_s)

    def submit_text(
        self,
        identifier: str,
        version: str,
        sources: Mapping[str, Any],
        explain: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any] | str:
        """Like the SDK's submit_text: str values make a text job."""
        return self.submit_embedded(identifier, version, sources, explain, **kwargs)
