"""Bounded decoding of a job request: the fixed schema walked over the body's own bytes.

`msgpack.unpackb` builds every object a body holds before anything looks at it: a megabyte of empty maps
inside lists becomes about a million Python dicts (74 times the body's size, measured), under a key the
worker then ignores. This module reads msgpack headers straight from the body instead (the cursor and its
budget: worker.decode_walk), in two passes:

1. The top-level map is walked once: its keys are read (at most 255 bytes each), every value is checked
   without being built (well-formed, declared lengths no longer than the bytes left, str valid UTF-8, map
   keys str or bin, no ext types) under a budget of objects, depth and container lengths. The offsets of
   the keys the worker uses are kept.
2. Only those values are then decoded, in the contract's order, each with its own limits: what is built is
   the model's names, the sources' keys and values (bin sliced once from the body, str decoded once), and a
   few scalars.

So decoding costs the values the worker keeps plus a bounded overhead per input (MAX_INPUTS of them at
most), whatever the shape: a bin is one copy of its bytes, a str at most 4 bytes a character (the one case
above 4 times its size: a text job's str holding a character beyond U+FFFF, which CPython's UTF-8 decoder
builds beside a draft of 1 byte a character, 5 times that str's bytes for a moment). CPU time is linear in
the body and capped by MAX_OBJECTS. Every violation is an InvalidRequest whose message names the path. Not
checked, because it would cost memory: duplicate keys inside ignored values (the maps the worker reads
refuse them).

The budgets are module constants rather than configuration: they bound what any valid request needs (the
largest valid request, 1000 input items with 10 inputs each, is about 22,000 objects in three levels of maps), so an
operator has nothing to tune.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from worker.decode_walk import (
    ARRAY,
    BIN,
    BOOL,
    FLOAT,
    INT,
    KIND_NAMES,
    MAP,
    MAX_CONTAINER_LEN,
    MAX_KEY_BYTES,
    NIL,
    STR,
    Reader,
)
from worker.errors import InvalidRequest

MAX_SOURCES = 1000  # per job, like the edge's maximumInputsPerJob
MAX_INPUTS_PER_SOURCE = 1000
# Model inputs in all the input items of a request: each costs about 150 bytes of Python objects beyond its
# data, so this keeps the overhead under 2 MiB whatever the keys' lengths.
MAX_INPUTS = 10_000

KNOWN_KEYS = frozenset({"model", "version", "sources", "explain", "timeout", "results", "updates", "request_id"})

_MAX_MESSAGE = 1000  # characters of an error message
_KEY_REFUSED = re.compile("[/\x00-\x1f\x7f-\x9f]")  # "/", and C0, DEL and C1 controls


@dataclass(frozen=True, slots=True)
class Fields:
    """What a request carries that the worker uses, decoded and checked."""

    model_id: str
    version: str
    sources: dict[str, dict[str, bytes | str]]
    any_bin: bool
    explain: bool
    timeout_s: float | None
    want_results: bool
    want_updates: bool
    request_id: str | None
    ignored_keys: tuple[str, ...]


def decode_fields(body: bytes) -> Fields:
    """Decode a non-empty body (its size already checked) or raise an InvalidRequest naming the path."""
    offsets: dict[str, int] = {}
    try:
        ignored = _walk_top(Reader(body), offsets)
        return _fields(body, offsets, ignored)
    except InvalidRequest as exc:
        error = exc
        if len(exc.message) > _MAX_MESSAGE:  # a path through long keys: the message travels in AMQP headers
            error = InvalidRequest(exc.message[: _MAX_MESSAGE - 3] + "...")
        # Echo the producer's request_id even in a rejection, when it is valid: an invalid one (say a
        # megabyte long) must not travel into the reply's AMQP headers.
        if "request_id" in offsets:
            try:
                error.request_id = _request_id(body, offsets["request_id"])
            except InvalidRequest:
                error.request_id = None
        if error is exc:
            raise
        raise error from None


def _walk_top(reader: Reader, offsets: dict[str, int]) -> list[str]:
    """Pass 1: the top-level map's keys, every value checked and skipped; offsets of the known ones."""
    kind, length, _ = reader.head("body")
    if kind != MAP:
        if kind in (STR, BIN):
            reader.pos += length
        if kind != ARRAY and reader.pos < reader.end:
            # JSON or text starts with a byte msgpack reads as a small int: say what the body is not.
            raise InvalidRequest(
                f"body: expected a msgpack map, got {KIND_NAMES[kind]} followed by {reader.end - reader.pos} more bytes"
            )
        raise InvalidRequest(f"body: expected a map, got {KIND_NAMES[kind]}")
    if length > MAX_CONTAINER_LEN:
        raise InvalidRequest(f"body: map of {length} entries, more than {MAX_CONTAINER_LEN}")
    ignored: list[str] = []
    seen: set[str] = set()
    for _ in range(length):
        key = reader.key("body")
        if key in seen:
            raise InvalidRequest(f"body: key {key!r} given twice")
        seen.add(key)
        if key in KNOWN_KEYS:
            offsets[key] = reader.pos
            reader.skip(key, 2)
        else:
            ignored.append(key)
            reader.skip(f"<ignored key {key!r}>", 2)
    if reader.pos < reader.end:
        raise InvalidRequest("body: trailing bytes after the msgpack map")
    return ignored


def _fields(body: bytes, offsets: dict[str, int], ignored: list[str]) -> Fields:
    """Pass 2: the known values, in the contract's order, each with its own limits."""
    if "model" not in offsets:
        raise InvalidRequest("model: required")
    reader = Reader(body, offsets["model"])
    kind, length, _ = reader.head("model")
    if kind == MAP:
        names = _model_map(reader, length)
        for name in ("identifier", "version"):
            if name not in names:
                raise InvalidRequest(f"model[{name!r}]: required")
        model_id = _name(body, names["identifier"], "model['identifier']")
        version = _name(body, names["version"], "model['version']")
    elif kind == STR:
        model_id = _name(body, offsets["model"], "model")
        if "version" not in offsets:
            raise InvalidRequest("version: required when model is a str")
        version = _name(body, offsets["version"], "version")
    else:
        raise InvalidRequest(f"model: expected map or str, got {KIND_NAMES[kind]}")

    if "sources" not in offsets:
        raise InvalidRequest("sources: required")
    sources, any_bin, _ = _sources(body, offsets["sources"])

    explain = _optional_bool(body, offsets, "explain", False)
    want_results = _optional_bool(body, offsets, "results", True)
    want_updates = _optional_bool(body, offsets, "updates", False)
    timeout_s = _timeout(body, offsets)
    request_id = _request_id(body, offsets["request_id"]) if "request_id" in offsets else None
    return Fields(
        model_id=model_id,
        version=version,
        sources=sources,
        any_bin=any_bin,
        explain=explain,
        timeout_s=timeout_s,
        want_results=want_results,
        want_updates=want_updates,
        request_id=request_id,
        ignored_keys=tuple(sorted(ignored)),
    )


def _model_map(reader: Reader, length: int) -> dict[str, int]:
    """The model map's keys and the offsets of their values (all of them checked in pass 1)."""
    names: dict[str, int] = {}
    for _ in range(length):
        key = reader.key("model")
        if key in names:
            raise InvalidRequest(f"model: key {key!r} given twice")
        names[key] = reader.pos
        reader.skip(f"model[{key!r}]", 3)
    return names


def _name(body: bytes, at: int, path: str) -> str:
    """A model identifier or version: a str with the rules of keys."""
    reader = Reader(body, at)
    kind, length, _ = reader.head(path)
    if kind != STR:
        raise InvalidRequest(f"{path}: expected str, got {KIND_NAMES[kind]}")
    if length > MAX_KEY_BYTES:
        raise InvalidRequest(f"{path}: key {reader.preview(length)!r}... is longer than {MAX_KEY_BYTES} bytes")
    return check_key(reader.text(length, path), path)


def _sources(body: bytes, at: int) -> tuple[dict[str, dict[str, bytes | str]], bool, bool]:
    reader = Reader(body, at)
    kind, count, _ = reader.head("sources")
    if kind != MAP:
        raise InvalidRequest(f"sources: expected map, got {KIND_NAMES[kind]}")
    if count == 0:
        raise InvalidRequest("sources: expected at least one input item, got an empty map")
    shorthand, any_bin, any_str = _scan_leaves(body, reader.pos, count)
    # A str is built as a str only in a text job: in a mixed one it is sliced as its UTF-8 bytes (checked
    # first), so no value is ever held as both a str and bytes.
    as_bytes = any_bin and any_str
    if shorthand:
        if count > MAX_INPUTS_PER_SOURCE:
            raise InvalidRequest(f"sources['job']: {count} model inputs exceeds {MAX_INPUTS_PER_SOURCE}")
        return {"job": _inputs(reader, count, "sources['job']", as_bytes)}, any_bin, any_str
    if count > MAX_SOURCES:
        raise InvalidRequest(f"sources: {count} input items exceeds {MAX_SOURCES}")
    sources: dict[str, dict[str, bytes | str]] = {}
    total = 0
    for _ in range(count):
        source = check_key(reader.key("sources"), "sources")
        if source in sources:
            raise InvalidRequest(f"sources: key {source!r} given twice")
        path = f"sources[{source!r}]"
        kind, length, _ = reader.head(path)
        if kind != MAP:
            raise InvalidRequest(f"{path}: expected map of model input to bin or str, got {KIND_NAMES[kind]}")
        if length == 0:
            raise InvalidRequest(f"{path}: expected at least one model input, got an empty map")
        if length > MAX_INPUTS_PER_SOURCE:
            raise InvalidRequest(f"{path}: {length} model inputs exceeds {MAX_INPUTS_PER_SOURCE}")
        total += length
        if total > MAX_INPUTS:
            raise InvalidRequest(f"{path}: more than {MAX_INPUTS} model inputs in all the input items")
        sources[source] = _inputs(reader, length, path, as_bytes)
    return sources, any_bin, any_str


def _scan_leaves(body: bytes, at: int, count: int) -> tuple[bool, bool, bool]:
    """By headers only: whether sources is the one-level shorthand, and whether it holds any bin, any str."""
    probe = Reader(body, at)
    kinds: set[int] = set()
    shorthand = True
    for _ in range(count):
        probe.skip("sources", 2)
        kind, length, _ = probe.head("sources")
        if kind in (STR, BIN):
            kinds.add(kind)
            probe.pos += length
            continue
        shorthand = False
        if kind != MAP:
            break  # the build pass says what is wrong here
        for _ in range(length):
            probe.skip("sources", 3)
            kind, length, _ = probe.head("sources")
            if kind not in (STR, BIN):
                break
            kinds.add(kind)
            probe.pos += length
        else:
            continue
        break
    return shorthand, BIN in kinds, STR in kinds


def _inputs(reader: Reader, count: int, path: str, as_bytes: bool) -> dict[str, bytes | str]:
    """One input item's map of model input to data: each value built once, from the body's bytes."""
    out: dict[str, bytes | str] = {}
    for _ in range(count):
        key = check_key(reader.key(path), path)
        if key in out:
            raise InvalidRequest(f"{path}: key {key!r} given twice")
        where = f"{path}[{key!r}]"
        kind, length, _ = reader.head(where)
        if kind == BIN:
            out[key] = reader.body[reader.pos : reader.pos + length]
            reader.pos += length
        elif kind == STR and as_bytes:
            out[key] = reader.body[reader.pos : reader.pos + length]
            reader.check_text(length, where)
        elif kind == STR:
            out[key] = reader.text(length, where)
        else:
            raise InvalidRequest(f"{where}: expected bin or str, got {KIND_NAMES[kind]}")
    return out


def _optional_bool(body: bytes, offsets: dict[str, int], key: str, default: bool) -> bool:
    if key not in offsets:
        return default
    kind, _, value = Reader(body, offsets[key]).head(key)
    if kind == NIL:
        return default
    if kind != BOOL:
        raise InvalidRequest(f"{key}: expected bool, got {KIND_NAMES[kind]}")
    return bool(value)


def _timeout(body: bytes, offsets: dict[str, int]) -> float | None:
    if "timeout" not in offsets:
        return None
    kind, _, value = Reader(body, offsets["timeout"]).head("timeout")
    if kind == NIL:
        return None
    if kind not in (INT, FLOAT) or not isinstance(value, int | float):
        raise InvalidRequest(f"timeout: expected a number of seconds, got {KIND_NAMES[kind]}")
    if not math.isfinite(value) or value <= 0:
        raise InvalidRequest(f"timeout: expected a positive finite number of seconds, got {value!r}")
    return float(value)


def _request_id(body: bytes, at: int) -> str | None:
    reader = Reader(body, at)
    kind, length, _ = reader.head("request_id")
    if kind == NIL:
        return None
    if kind != STR:
        raise InvalidRequest(f"request_id: expected str, got {KIND_NAMES[kind]}")
    if not 0 < length <= MAX_KEY_BYTES:
        raise InvalidRequest(f"request_id: expected 1 to {MAX_KEY_BYTES} bytes")
    return reader.text(length, "request_id")


def check_key(key: str, container: str) -> str:
    """The contract's rules for a key (its type and length were checked from its header)."""
    if not key:
        raise InvalidRequest(f"{container}: keys must be non-empty")
    if _KEY_REFUSED.search(key) is None:
        return key
    if "/" in key:
        raise InvalidRequest(f"{container}: key {key!r} must not contain '/'")
    raise InvalidRequest(f"{container}: key {key!r} must not contain control characters")
