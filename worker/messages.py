"""The wire formats: a delivery decoded once into a typed JobRequest, and the Job status reply encoded back."""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import msgpack

from worker.errors import InvalidRequest, PayloadTooLarge, UnsupportedContentType

MSGPACK_CONTENT_TYPES = frozenset({"application/msgpack", "application/x-msgpack", "application/vnd.msgpack"})
REPLY_CONTENT_TYPE = "application/msgpack"
MAX_KEY_BYTES = 255
MAX_SOURCES = 1000  # per job, like the edge's maximumInputsPerJob
MAX_INPUTS_PER_SOURCE = 1000
# Containers in a request are small maps; anything bigger than this is hostile, so msgpack refuses it
# before allocating (its own defaults scale with the buffer size).
_MAX_CONTAINER_LEN = 4096
_KNOWN_KEYS = frozenset({"model", "version", "sources", "explain", "timeout", "results", "updates", "request_id"})

InputType = Literal["text", "embedded"]
Sources = dict[str, dict[str, bytes | str]]


@dataclass(frozen=True, slots=True)
class ReplyRoute:
    """Where and how replies for one delivery go; readable from AMQP properties even when the body is garbage."""

    reply_to: str | None
    correlation_id: str | None
    message_id: str | None
    request_id: str | None = None

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


def unpack_body(body: bytes, *, max_request_bytes: int) -> Any:
    """msgpack-decode a body with every size bounded, or raise a precise InvalidRequest."""
    if len(body) > max_request_bytes:
        raise PayloadTooLarge(f"body: {len(body)} bytes exceeds worker.max_request_bytes ({max_request_bytes})")
    if not body:
        raise InvalidRequest("body: empty, expected a msgpack map")
    try:
        return msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            max_str_len=max_request_bytes,
            max_bin_len=max_request_bytes,
            max_array_len=_MAX_CONTAINER_LEN,
            max_map_len=_MAX_CONTAINER_LEN,
            max_ext_len=0,
        )
    except msgpack.ExtraData as exc:
        if not isinstance(exc.unpacked, dict):
            # JSON or text starts with a byte msgpack reads as a small int: say what the body is not.
            raise InvalidRequest(
                f"body: expected a msgpack map, got {_kind(exc.unpacked)} followed by {len(exc.extra)} more bytes"
            ) from None
        raise InvalidRequest("body: trailing bytes after the msgpack map") from None
    except UnicodeDecodeError:
        raise InvalidRequest("body: a msgpack str is not valid UTF-8 (send bytes as bin)") from None
    except Exception as exc:  # noqa: BLE001 -- msgpack raises ValueError, TypeError, StackError, FormatError...
        raise InvalidRequest(f"body: not a valid msgpack message ({type(exc).__name__}: {exc})"[:300]) from None


def decode_request(body: bytes, content_type: str | None, *, max_request_bytes: int) -> JobRequest:
    """Turn a delivery body into a JobRequest, or raise InvalidRequest naming the path and what was expected."""
    check_content_type(content_type)
    data = unpack_body(body, max_request_bytes=max_request_bytes)
    try:
        return request_from_map(data, size_bytes=len(body))
    except InvalidRequest as exc:
        # Echo the producer's request_id even in a rejection, when it is valid: an invalid one (say a megabyte
        # long) must not travel into the reply's AMQP headers.
        request_id = data.get("request_id") if isinstance(data, dict) else None
        if isinstance(request_id, str) and 0 < len(request_id.encode("utf-8")) <= MAX_KEY_BYTES:
            exc.request_id = request_id
        raise


def request_from_map(data: Any, *, size_bytes: int = 0) -> JobRequest:
    if not isinstance(data, dict):
        raise InvalidRequest(f"body: expected a map, got {_kind(data)}")
    model = data.get("model")
    if "model" not in data:
        raise InvalidRequest("model: required")
    if isinstance(model, dict):
        model_id = _require_name(model, "identifier", "model['identifier']")
        version = _require_name(model, "version", "model['version']")
    elif isinstance(model, str):
        model_id = _check_name(model, "model")
        if "version" not in data:
            raise InvalidRequest("version: required when model is a str")
        version = _check_name(data["version"], "version")
    else:
        raise InvalidRequest(f"model: expected map or str, got {_kind(model)}")

    if "sources" not in data:
        raise InvalidRequest("sources: required")
    sources, any_bin, any_str = _decode_sources(data["sources"])
    input_type: InputType = "embedded" if any_bin else "text"
    if any_bin and any_str:
        sources = {
            s: {k: v.encode("utf-8") if isinstance(v, str) else v for k, v in i.items()} for s, i in sources.items()
        }

    explain = _optional_bool(data, "explain", False)
    want_results = _optional_bool(data, "results", True)
    want_updates = _optional_bool(data, "updates", False)
    timeout_s: float | None = None
    if data.get("timeout") is not None:
        timeout = data["timeout"]
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise InvalidRequest(f"timeout: expected a number of seconds, got {_kind(timeout)}")
        if not math.isfinite(timeout) or timeout <= 0:
            raise InvalidRequest(f"timeout: expected a positive finite number of seconds, got {timeout!r}")
        timeout_s = float(timeout)
    request_id = data.get("request_id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidRequest(f"request_id: expected str, got {_kind(request_id)}")
    if request_id is not None and not 0 < len(request_id.encode("utf-8")) <= MAX_KEY_BYTES:
        raise InvalidRequest(f"request_id: expected 1 to {MAX_KEY_BYTES} bytes")
    ignored = tuple(sorted(str(k) for k in data if k not in _KNOWN_KEYS))
    return JobRequest(
        model_id=model_id,
        version=version,
        sources=sources,
        input_type=input_type,
        explain=explain,
        timeout_s=timeout_s,
        want_results=want_results,
        want_updates=want_updates,
        request_id=request_id,
        size_bytes=size_bytes,
        ignored_keys=ignored,
    )


def _decode_sources(value: Any) -> tuple[Sources, bool, bool]:
    if not isinstance(value, dict):
        raise InvalidRequest(f"sources: expected map, got {_kind(value)}")
    if not value:
        raise InvalidRequest("sources: expected at least one input item, got an empty map")
    # The SDK's shorthand: a one-level map {model input: data} is the input item "job".
    if all(isinstance(v, bytes | str) for v in value.values()):
        value = {"job": value}
    if len(value) > MAX_SOURCES:
        raise InvalidRequest(f"sources: {len(value)} input items exceeds {MAX_SOURCES}")
    sources: Sources = {}
    any_bin = any_str = False
    for source, inputs in value.items():
        _check_key(source, "sources")
        path = f"sources[{source!r}]"
        if not isinstance(inputs, dict):
            raise InvalidRequest(f"{path}: expected map of model input to bin or str, got {_kind(inputs)}")
        if not inputs:
            raise InvalidRequest(f"{path}: expected at least one model input, got an empty map")
        if len(inputs) > MAX_INPUTS_PER_SOURCE:
            raise InvalidRequest(f"{path}: {len(inputs)} model inputs exceeds {MAX_INPUTS_PER_SOURCE}")
        out: dict[str, bytes | str] = {}
        for key, data in inputs.items():
            _check_key(key, path)
            if isinstance(data, bytes):
                any_bin = True
            elif isinstance(data, str):
                any_str = True
            else:
                raise InvalidRequest(f"{path}[{key!r}]: expected bin or str, got {_kind(data)}")
            out[key] = data
        sources[source] = out
    return sources, any_bin, any_str


def _check_key(key: Any, container: str) -> str:
    if not isinstance(key, str):
        raise InvalidRequest(f"{container}: keys must be str, got {_kind(key)}")
    if not key:
        raise InvalidRequest(f"{container}: keys must be non-empty")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidRequest(f"{container}: key {key[:40]!r}... is longer than {MAX_KEY_BYTES} bytes")
    if "/" in key:
        raise InvalidRequest(f"{container}: key {key!r} must not contain '/'")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in key):  # C0, DEL and C1 controls
        raise InvalidRequest(f"{container}: key {key!r} must not contain control characters")
    return key


def _check_name(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{path}: expected str, got {_kind(value)}")
    return _check_key(value, path)


def _require_name(model: dict[Any, Any], key: str, path: str) -> str:
    if key not in model:
        raise InvalidRequest(f"{path}: required")
    return _check_name(model[key], path)


def _optional_bool(data: dict[str, Any], key: str, default: bool) -> bool:
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidRequest(f"{key}: expected bool, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    names = {bytes: "bin", str: "str", dict: "map", list: "array", bool: "bool", int: "int", float: "float"}
    if value is None:
        return "nil"
    return names.get(type(value), type(value).__name__)


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
    return {
        "content_type": REPLY_CONTENT_TYPE,
        "delivery_mode": 2,
        "correlation_id": route.correlation_id,
        "message_id": uuid.uuid4().hex,
        "type": "job.status",
        "timestamp": int(datetime.now(UTC).timestamp()),
        "headers": headers,
    }
