"""What the broker link is built from: the queues to declare, the connection parameters, and short names
for why a connection failed. Pure functions of the configuration; no connection is made here."""

from __future__ import annotations

import os
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
from pika.adapters.utils import connection_workflow

from worker.config import AmqpConfig
from worker.errors import ConfigError, QueueMismatch

# How long the broker may keep us blocked (memory or disk alarm) before we drop the connection and try
# another URL: publishing is impossible meanwhile, and so is acknowledging (acks wait for confirms). A publish
# waiting for its confirm drops the connection sooner, after amqp.confirm_timeout (worker/broker_watch.py);
# this one also covers a blocked connection with nothing to confirm, and is never shorter than that timeout.
BLOCKED_CONNECTION_TIMEOUT_S = 120
# A setup step may take this long at least (or the heartbeat interval, when longer): see setup_step_bound.
SETUP_STEP_MIN_S = 10.0


@dataclass(slots=True)
class QueuePlan:
    """The queues of the contract's section 3 and their arguments."""

    queue: str
    dead_letter_queue: str
    reply_queue: str
    arguments: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, amqp: AmqpConfig) -> QueuePlan:
        main: dict[str, Any] = {
            "x-queue-type": amqp.queue_type,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": amqp.dead_letter_queue,
        }
        if amqp.queue_type == "quorum":
            main["x-delivery-limit"] = amqp.delivery_limit
        plain = {"x-queue-type": amqp.queue_type}
        return cls(
            queue=amqp.queue,
            dead_letter_queue=amqp.dead_letter_queue,
            reply_queue=amqp.reply_queue,
            arguments={amqp.dead_letter_queue: plain, amqp.reply_queue: dict(plain), amqp.queue: main},
        )


def connection_parameters(amqp: AmqpConfig, url: str) -> pika.URLParameters:
    params = pika.URLParameters(url)
    params.heartbeat = amqp.heartbeat
    params.blocked_connection_timeout = max(BLOCKED_CONNECTION_TIMEOUT_S, amqp.confirm_timeout)
    params.connection_attempts = 1
    params.socket_timeout = 10
    params.stack_timeout = max(15.0, setup_step_bound(amqp))  # TCP, TLS and the AMQP handshake together
    params.client_properties = {
        "connection_name": f"edge-worker {socket.gethostname()} pid {os.getpid()}",
        "product": "edge-worker",
    }
    if url.startswith("amqps://"):
        context = ssl.create_default_context(cafile=amqp.tls_ca_file or None)
        if amqp.tls_cert_file:
            context.load_cert_chain(amqp.tls_cert_file, amqp.tls_key_file or None)
        if not amqp.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        params.ssl_options = pika.SSLOptions(context, server_hostname=params.host)
    return params


def setup_error(plan: QueuePlan, name: str, code: int | None, text: str) -> Exception | None:
    """What a queue declare refused by the broker means (406, 404, 403), naming the queue; None for another code."""
    if code == 406:
        return QueueMismatch(
            f"queue {name!r} exists with other arguments than configured: wanted durable with "
            f"{plan.arguments[name]}; the broker answered: {text}. Delete the queue or change "
            "the amqp.* settings to match it"
        )
    if code == 404:
        return ConfigError(
            f"queue {name!r} does not exist and amqp.declare is false: declare it, or set amqp.declare = true"
        )
    if code in (403, 530):
        return ConfigError(f"queue {name!r}: access refused by the broker: {text}")
    return None


def setup_step_bound(amqp: AmqpConfig) -> float:
    """Seconds one setup step (a channel open, a declare, confirm select, qos, consume-ok) may take."""
    return max(SETUP_STEP_MIN_S, float(amqp.heartbeat))


def root_cause(error: BaseException) -> BaseException:
    """The error under pika's connection-workflow wrappers, whose own text is empty."""
    for _ in range(5):
        if isinstance(error, connection_workflow.AMQPConnectionWorkflowFailed) and error.exceptions:
            error = error.exceptions[-1]
        elif isinstance(error, connection_workflow.AMQPConnectorPhaseErrorBase):
            error = error.exception
        elif (
            isinstance(error, pika.exceptions.AMQPConnectionError)
            and len(error.args) == 1
            and isinstance(error.args[0], BaseException)
        ):
            error = error.args[0]
        else:
            break
    return error


def describe_error(error: BaseException) -> str:
    """One short line naming why a connection or channel went away (never a password: pika puts none there)."""
    error = root_cause(error)
    if isinstance(error, pika.exceptions.ConnectionClosedByBroker):
        return f"closed by broker: {error.reply_code} {error.reply_text}"
    if isinstance(error, pika.exceptions.ChannelClosed):
        return f"channel closed: {error.reply_code} {error.reply_text}"
    if isinstance(error, pika.exceptions.AMQPHeartbeatTimeout):
        return "missed heartbeats"
    return f"{type(error).__name__}: {error}"[:300]
