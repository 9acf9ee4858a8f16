"""The W3C Trace Context values (contract §7): `traceparent` and `tracestate` read from a request's AMQP
headers, checked as the W3C says, and rendered again for the job's own spans. Pure values: no OpenTelemetry."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import structlog

log = structlog.get_logger("worker.tracing")

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# W3C Trace Context: a vendor propagates at least 512 characters of tracestate and at most 32 list members;
# over the limit, members longer than 128 characters go first, then members from the end.
TRACESTATE_MAX_CHARS = 512
TRACESTATE_MAX_MEMBERS = 32
_TRACESTATE_LONG_MEMBER = 128
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class TraceContext:
    """One span's place in a trace: W3C trace-id, span (parent) id, trace flags, and the tracestate."""

    trace_id: str  # 32 lowercase hex digits, not all zero
    span_id: str  # 16 lowercase hex digits, not all zero
    flags: str = "01"  # 2 lowercase hex digits; bit 0 is "sampled"
    tracestate: str | None = None

    @property
    def traceparent(self) -> str:
        """The W3C traceparent header naming this span (version 00)."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def child(self) -> TraceContext:
        """A new span in the same trace (a new span id; same flags and tracestate)."""
        return TraceContext(self.trace_id, new_span_id(), self.flags, self.tracestate)


def new_span_id() -> str:
    """A random W3C span id: 16 lowercase hex digits, not all zero."""
    return _random_id(8)


def new_trace_id() -> str:
    """A random W3C trace id: 32 lowercase hex digits, not all zero."""
    return _random_id(16)


def _random_id(size_bytes: int) -> str:
    while True:
        value = os.urandom(size_bytes).hex()
        if value.strip("0"):  # all zeros is W3C's "invalid"
            return value


def parse_traceparent(value: str) -> TraceContext:
    """The W3C traceparent as a TraceContext; ValueError naming what is wrong.

    Version 00 is exactly 55 characters; a later version may be longer, and its first four fields are read
    as version 00's (the W3C rule for forward compatibility). Hex is lowercase; ids are not all zero.
    """
    value = value.strip(" \t")
    if len(value) < 55:
        raise ValueError(f"traceparent is {len(value)} characters; version 00 has 55")
    version = value[:2]
    if not _is_hex(version) or version == "ff":
        raise ValueError(f"traceparent version {version!r} is not two lowercase hex digits other than ff")
    if version == "00" and len(value) != 55:
        raise ValueError(f"traceparent is {len(value)} characters; version 00 has 55")
    if len(value) > 55 and value[55] != "-":
        raise ValueError("traceparent of a later version has no '-' after its flags")
    if value[2] != "-" or value[35] != "-" or value[52] != "-":
        raise ValueError("traceparent fields are not separated as version-traceid-parentid-flags")
    trace_id, span_id, flags = value[3:35], value[36:52], value[53:55]
    for name, field in (("trace-id", trace_id), ("parent-id", span_id), ("trace-flags", flags)):
        if not _is_hex(field):
            raise ValueError(f"traceparent {name} {field!r} is not lowercase hex")
    if trace_id == "0" * 32:
        raise ValueError("traceparent trace-id is all zeros")
    if span_id == "0" * 16:
        raise ValueError("traceparent parent-id is all zeros")
    return TraceContext(trace_id=trace_id, span_id=span_id, flags=flags)


def cap_tracestate(value: str) -> str | None:
    """The tracestate as it is passed on: at most 32 members and 512 characters (W3C's truncation order)."""
    members = [member.strip(" \t") for member in value.split(",")]
    members = [member for member in members if member][:TRACESTATE_MAX_MEMBERS]
    if len(",".join(members)) > TRACESTATE_MAX_CHARS:
        members = [member for member in members if len(member) <= _TRACESTATE_LONG_MEMBER]
        while members and len(",".join(members)) > TRACESTATE_MAX_CHARS:
            members.pop()
    return ",".join(members) or None


def context_from_headers(headers: Any, *, message_id: str | None = None) -> TraceContext | None:
    """The request's trace context from its AMQP headers (str or bytes values); None when absent or invalid.

    An invalid traceparent is ignored (and its tracestate with it, as W3C says) with one debug line.
    """
    if not isinstance(headers, Mapping):
        return None
    raw = _header(headers, TRACEPARENT)
    if raw is None:
        return None
    try:
        if not isinstance(raw, str):
            raise ValueError(f"traceparent is a {type(raw).__name__}, not a string")
        context = parse_traceparent(raw)
    except ValueError as exc:
        log.debug("traceparent_ignored", message_id=message_id, error=str(exc), value=repr(raw)[:80])
        return None
    state = _header(headers, TRACESTATE)
    if isinstance(state, str):
        context = replace(context, tracestate=cap_tracestate(state[: 8 * TRACESTATE_MAX_CHARS]))
    return context


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace-id of a traceparent this module rendered (None for None)."""
    return traceparent[3:35] if traceparent else None


def _header(headers: Mapping[Any, Any], name: str) -> Any:
    value = headers.get(name)
    if value is None:
        for key, candidate in headers.items():
            if isinstance(key, str) and key.lower() == name:
                value = candidate
                break
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("ascii")
        except UnicodeDecodeError:
            return value
    return value


def _is_hex(text: str) -> bool:
    return all(char in _HEX for char in text)
