"""The wire formats: a delivery decoded once into a typed JobRequest, and the Job status reply encoded back."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import msgpack

from worker.decode import MAX_INPUTS, MAX_INPUTS_PER_SOURCE, MAX_SOURCES, decode_fields
from worker.decode_walk import MAX_CONTAINER_LEN, MAX_DEPTH, MAX_KEY_BYTES, MAX_OBJECTS
from worker.errors import InvalidRequest, PayloadTooLarge, UnsupportedContentType

__all__ = [
    "MAX_CONTAINER_LEN",
    "MAX_DEPTH",
    "MAX_INPUTS",
    "MAX_INPUTS_PER_SOURCE",
    "MAX_KEY_BYTES",
    "MAX_OBJECTS",
    "MAX_SOURCES",
    "MSGPACK_CONTENT_TYPES",
    "JobRequest",
    "ReplyRoute",
    "check_content_type",
    "decode_request",
    "empty_reply",
    "encode_reply",
    "now_rfc3339",
    "reply_properties_fields",
    "route_from_properties",
]

MSGPACK_CONTENT_TYPES = frozenset({"application/msgpack", "application/x-msgpack", "application/vnd.msgpack"})
REPLY_CONTENT_TYPE = "application/msgpack"

InputType = Literal["text", "embedded"]
Sources = dict[str, dict[str, bytes | str]]


@dataclass(frozen=True, slots=True)
class ReplyRoute:
    """Where and how replies for one delivery go; readable from AMQP properties even when the body is garbage."""

    reply_to: str | None
    correlation_id: str | None
    message_id: str | None
    request_id: str | None = None
    traceparent: str | None = None  # the job's W3C trace context (worker.tracing), sent in every reply's headers
    tracestate: str | None = None

    @property
    def idempotency_key(self) -> str | None:
        return self.message_id or self.request_id


@dataclass(frozen=True, slots=True)
class JobRequest:
    """One valid job request: everything after decoding works with this value, not with dicts."""

    model_id: str
    version: str
    sources: Sources
    input_type: InputType
    explain: bool = False
    timeout_s: float | None = None
    want_results: bool = True
    want_updates: bool = False
    request_id: str | None = None
    size_bytes: int = 0
    ignored_keys: tuple[str, ...] = ()

    def input_sizes(self) -> dict[str, dict[str, int]]:
        return {s: {k: _raw_len(v) for k, v in inputs.items()} for s, inputs in self.sources.items()}


def _raw_len(value: bytes | str) -> int:
    return len(value) if isinstance(value, bytes) else len(value.encode("utf-8"))


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def route_from_properties(properties: Any) -> ReplyRoute:
    """Read reply_to, correlation_id and message_id from pika BasicProperties (or anything alike)."""
    message_id = _text(getattr(properties, "message_id", None)) or None
    correlation_id = _text(getattr(properties, "correlation_id", None)) or message_id
    return ReplyRoute(
        reply_to=_text(getattr(properties, "reply_to", None)) or None,
        correlation_id=correlation_id,
        message_id=message_id,
    )


def check_content_type(content_type: str | None) -> None:
    if content_type is None or content_type == "":
        return
    base = content_type.split(";", 1)[0].strip().lower()
    if base not in MSGPACK_CONTENT_TYPES:
        raise UnsupportedContentType(
            f"content_type: expected absent or one of {', '.join(sorted(MSGPACK_CONTENT_TYPES))}, "
            f"got {content_type[:100]!r}"
        )


def decode_request(body: bytes, content_type: str | None, *, max_request_bytes: int) -> JobRequest:
    """Turn a delivery body into a JobRequest, or raise InvalidRequest naming the path and what was expected.

    The body is walked by its msgpack headers (worker.decode), never unpacked whole: what the worker ignores
    is checked but not built, so no shape of body costs more than a bounded multiple of its size.
    """
    check_content_type(content_type)
    if len(body) > max_request_bytes:
        raise PayloadTooLarge(f"body: {len(body)} bytes exceeds worker.max_request_bytes ({max_request_bytes})")
    if not body:
        raise InvalidRequest("body: empty, expected a msgpack map")
    fields = decode_fields(body)
    return JobRequest(
        model_id=fields.model_id,
        version=fields.version,
        sources=fields.sources,
        input_type="embedded" if fields.any_bin else "text",
        explain=fields.explain,
        timeout_s=fields.timeout_s,
        want_results=fields.want_results,
        want_updates=fields.want_updates,
        request_id=fields.request_id,
        size_bytes=len(body),
        ignored_keys=fields.ignored_keys,
    )


# -- replies ---------------------------------------------------------------------------------------------


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def empty_reply(route: ReplyRoute, *, status: str, final: bool) -> dict[str, Any]:
    """A reply with every documented key present, for requests that never reached the edge."""
    return {
        "status": status,
        "final": final,
        "job_identifier": None,
        "request_id": route.request_id,
        "correlation_id": route.correlation_id,
        "model": {"identifier": None, "version": None, "name": None},
        "explain": False,
        "total": 0,
        "pending": 0,
        "completed": 0,
        "failed": 0,
        "job_inputs": [],
        "created_at": None,
        "updated_at": None,
        "submitted_at": None,
        "finished_at": now_rfc3339() if final else None,
        "elapsed_ms": 0,
    }


def encode_reply(reply: Mapping[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(reply, use_bin_type=True)
    return packed


def reply_properties_fields(reply: Mapping[str, Any], route: ReplyRoute) -> dict[str, Any]:
    """The AMQP property values of a reply (the broker layer turns them into pika BasicProperties)."""
    headers: dict[str, Any] = {"status": reply["status"], "final": bool(reply["final"])}
    if route.request_id is not None:
        headers["request_id"] = route.request_id
    if route.traceparent is not None:
        headers["traceparent"] = route.traceparent
        if route.tracestate:
            headers["tracestate"] = route.tracestate
    return {
        "content_type": REPLY_CONTENT_TYPE,
        "delivery_mode": 2,
        "correlation_id": route.correlation_id,
        "message_id": uuid.uuid4().hex,
        "type": "job.status",
        "timestamp": int(datetime.now(UTC).timestamp()),
        "headers": headers,
    }
