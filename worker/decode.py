"""Bounded decoding of a job request: the fixed schema walked over the body's own bytes.

`msgpack.unpackb` builds every object a body holds before anything looks at it: a megabyte of empty maps
inside lists becomes about a million Python dicts (74 times the body's size, measured), under a key the
worker then ignores. This module reads msgpack headers straight from the body instead, in two passes:

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

import codecs
import math
import re
import struct
from dataclasses import dataclass

from worker.errors import InvalidRequest

MAX_KEY_BYTES = 255
MAX_SOURCES = 1000  # per job, like the edge's maximumInputsPerJob
MAX_INPUTS_PER_SOURCE = 1000
# Model inputs in all the input items of a request: each costs about 150 bytes of Python objects beyond its
# data, so this keeps the overhead under 2 MiB whatever the keys' lengths.
MAX_INPUTS = 10_000
MAX_DEPTH = 32  # the schema needs 3 levels; producers' own values get the rest
MAX_OBJECTS = 100_000  # every msgpack object in the body, built or skipped: bounds the walk's CPU time
MAX_CONTAINER_LEN = 4096  # entries of any one map or array outside the sources' own limits

KNOWN_KEYS = frozenset({"model", "version", "sources", "explain", "timeout", "results", "updates", "request_id"})

_MALFORMED = "body: not a valid msgpack message"
# fixints, nil, false, true, the empty str
_ONE_BYTE = frozenset([*range(0x80), *range(0xE0, 0x100), 0xC0, 0xC2, 0xC3, 0xA0])
_EMPTY = frozenset([0x80, 0x90])  # the empty map and array
_CHECK_SLICE = 1 << 16  # bytes of a str checked as UTF-8 at a time
_MAX_MESSAGE = 1000  # characters of an error message
_KEY_REFUSED = re.compile("[/\x00-\x1f\x7f-\x9f]")  # "/", and C0, DEL and C1 controls

# Kinds of msgpack objects, as the contract names them in messages.
_NIL, _BOOL, _INT, _FLOAT, _STR, _BIN, _ARRAY, _MAP, _EXT = range(9)
_KIND_NAMES = ("nil", "bool", "int", "float", "str", "bin", "array", "map", "ext")

# Type bytes 0xc0..0xdf: (kind, bytes of length or value after the type byte, signed).
_HEADS: dict[int, tuple[int, int, bool]] = {
    0xC0: (_NIL, 0, False),
    0xC2: (_BOOL, 0, False),
    0xC3: (_BOOL, 0, False),
    0xC4: (_BIN, 1, False),
    0xC5: (_BIN, 2, False),
    0xC6: (_BIN, 4, False),
    0xC7: (_EXT, 1, False),
    0xC8: (_EXT, 2, False),
    0xC9: (_EXT, 4, False),
    0xCA: (_FLOAT, 4, False),
    0xCB: (_FLOAT, 8, False),
    0xCC: (_INT, 1, False),
    0xCD: (_INT, 2, False),
    0xCE: (_INT, 4, False),
    0xCF: (_INT, 8, False),
    0xD0: (_INT, 1, True),
    0xD1: (_INT, 2, True),
    0xD2: (_INT, 4, True),
    0xD3: (_INT, 8, True),
    0xD4: (_EXT, 0, False),
    0xD5: (_EXT, 0, False),
    0xD6: (_EXT, 0, False),
    0xD7: (_EXT, 0, False),
    0xD8: (_EXT, 0, False),
    0xD9: (_STR, 1, False),
    0xDA: (_STR, 2, False),
    0xDB: (_STR, 4, False),
    0xDC: (_ARRAY, 2, False),
    0xDD: (_ARRAY, 4, False),
    0xDE: (_MAP, 2, False),
    0xDF: (_MAP, 4, False),
}


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


def malformed(detail: str, path: str) -> InvalidRequest:
    return InvalidRequest(f"{_MALFORMED} ({detail}, at {path})")


class _Reader:
    """A cursor over the body: reads one header at a time, builds only what it is asked to."""

    __slots__ = ("body", "end", "objects", "pos", "view")

    def __init__(self, body: bytes, pos: int = 0) -> None:
        self.body = body
        self.view = memoryview(body)
        self.end = len(body)
        self.pos = pos
        self.objects = 0

    def head(self, path: str) -> tuple[int, int, bool | int | float | None]:
        """Read one object's header: (kind, length, scalar value).

        The length is that of a str or bin (the cursor is left on its first byte) or the entries of an array
        or map; a declared length is checked against the bytes left before anything else happens. Scalars
        are read whole. Ext types and the reserved byte are malformed; the object budget is counted here.
        """
        self.objects += 1
        if self.objects > MAX_OBJECTS:
            raise InvalidRequest(f"{path}: more than {MAX_OBJECTS} msgpack objects in the request")
        pos, body = self.pos, self.body
        if pos >= self.end:
            raise malformed("the body ends where a value should start", path)
        byte = body[pos]
        pos += 1
        if byte <= 0x7F:
            self.pos = pos
            return _INT, 0, byte
        if byte >= 0xE0:
            self.pos = pos
            return _INT, 0, byte - 0x100
        if byte <= 0x8F:
            kind, length = _MAP, byte & 0x0F
        elif byte <= 0x9F:
            kind, length = _ARRAY, byte & 0x0F
        elif byte <= 0xBF:
            kind, length = _STR, byte & 0x1F
        else:
            entry = _HEADS.get(byte)
            if entry is None:
                raise malformed(f"byte 0x{byte:02x} at offset {pos - 1} is not a msgpack type", path)
            kind, size, signed = entry
            if kind == _EXT:
                raise malformed("ext types are not accepted", path)
            if pos + size > self.end:
                raise malformed(f"the body ends inside a {_KIND_NAMES[kind]} header", path)
            if kind == _NIL:
                self.pos = pos
                return _NIL, 0, None
            if kind == _BOOL:
                self.pos = pos
                return _BOOL, 0, byte == 0xC3
            if kind == _FLOAT:
                self.pos = pos + size
                return _FLOAT, 0, struct.unpack_from(">f" if size == 4 else ">d", body, pos)[0]
            number = int.from_bytes(body[pos : pos + size], "big", signed=signed)
            pos += size
            if kind == _INT:
                self.pos = pos
                return _INT, 0, number
            length = number
        self.pos = pos
        left = self.end - pos
        if kind in (_STR, _BIN) and length > left:
            raise malformed(f"a {_KIND_NAMES[kind]} of {length} bytes declared, {left} bytes left", path)
        if kind == _ARRAY and length > left:
            raise malformed(f"an array of {length} items declared, {left} bytes left", path)
        if kind == _MAP and 2 * length > left:
            raise malformed(f"a map of {length} entries declared, {left} bytes left", path)
        return kind, length, None

    def text(self, length: int, path: str) -> str:
        """The str payload under the cursor (its length already checked), decoded once from the body."""
        start = self.pos
        self.pos = start + length
        try:
            return str(self.view[start : start + length], "utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest(f"body: a msgpack str is not valid UTF-8 (send bytes as bin), at {path}") from None

    def check_text(self, length: int, path: str) -> None:
        """Check that the str payload under the cursor is UTF-8 without keeping it; the cursor moves past it.

        Decoded in slices: a whole str with one character beyond U+FFFF would cost 5 times its size while
        CPython's decoder widens its draft.
        """
        start, end = self.pos, self.pos + length
        self.pos = end
        try:
            if length <= _CHECK_SLICE:
                str(self.view[start:end], "utf-8")
                return
            decoder = codecs.getincrementaldecoder("utf-8")()
            for at in range(start, end, _CHECK_SLICE):
                decoder.decode(self.view[at : min(at + _CHECK_SLICE, end)], final=at + _CHECK_SLICE >= end)
        except UnicodeDecodeError:
            raise InvalidRequest(f"body: a msgpack str is not valid UTF-8 (send bytes as bin), at {path}") from None

    def preview(self, length: int) -> str:
        """The start of a str under the cursor, for a message (never more than 40 characters)."""
        return str(self.view[self.pos : self.pos + min(length, 160)], "utf-8", "replace")[:40]

    def key(self, container: str) -> str:
        """A map key the worker reads: a str of at most MAX_KEY_BYTES, refused by its header when longer."""
        kind, length, _ = self.head(container)
        if kind != _STR:
            raise InvalidRequest(f"{container}: keys must be str, got {_KIND_NAMES[kind]}")
        if length > MAX_KEY_BYTES:
            raise InvalidRequest(f"{container}: key {self.preview(length)!r}... is longer than {MAX_KEY_BYTES} bytes")
        return self.text(length, container)

    def skip(self, path: str, depth: int) -> None:
        """Check one value without building it: well-formed and within the budget (depth of the value given).

        Iterative, so a deep value cannot exhaust the stack; the path of an error is rebuilt from the open
        containers only when there is one.
        """
        # One frame per open container: [is_map, declared entries, slots left, offset of the current key].
        frames: list[list[int]] = []
        started = False
        while True:
            while frames and frames[-1][2] == 0:
                frames.pop()
            at_key = False
            if frames:
                frame = frames[-1]
                at_key = bool(frame[0]) and frame[2] % 2 == 0
                if at_key:
                    frame[3] = -1  # a key being read: errors name its map
                frame[2] -= 1
            elif started:
                return
            started = True
            at = self.pos
            if not at_key and at < self.end:
                # Fast path for the objects hostile bodies are made of: one-byte scalars, empty containers.
                byte = self.body[at]
                flat = byte in _ONE_BYTE or (byte in _EMPTY and depth + len(frames) <= MAX_DEPTH)
                if flat and self.objects < MAX_OBJECTS:
                    self.objects += 1
                    self.pos = at + 1
                    continue
            try:
                kind, length, _ = self.head(path)
            except InvalidRequest as exc:
                raise self._at(exc, path, frames) from None
            if at_key:
                if kind not in (_STR, _BIN):
                    where = self._path(path, frames)
                    raise InvalidRequest(f"{where}: map keys must be str or bin, got {_KIND_NAMES[kind]}")
                frames[-1][3] = at
            if kind == _STR:
                try:
                    self.check_text(length, path)
                except InvalidRequest as exc:
                    raise self._at(exc, path, frames) from None
            elif kind == _BIN:
                self.pos += length
            elif kind in (_ARRAY, _MAP):
                if depth + len(frames) > MAX_DEPTH:
                    raise InvalidRequest(f"{self._path(path, frames)}: nesting deeper than {MAX_DEPTH}")
                if length > MAX_CONTAINER_LEN:
                    noun = "items" if kind == _ARRAY else "entries"
                    where = self._path(path, frames)
                    raise InvalidRequest(
                        f"{where}: {_KIND_NAMES[kind]} of {length} {noun}, more than {MAX_CONTAINER_LEN}"
                    )
                if length:
                    is_map = int(kind == _MAP)
                    frames.append([is_map, length, length * (1 + is_map), -1])

    def _at(self, exc: InvalidRequest, path: str, frames: list[list[int]]) -> InvalidRequest:
        """An error head() raised with the value's top path, told where inside the value it is."""
        if not frames:
            return exc
        where = self._path(path, frames)
        message = exc.message
        for end in (")", ""):
            if message.endswith(f", at {path}{end}"):
                message = message[: -len(f"{path}{end}")] + where + end
                break
        else:
            if message.startswith(f"{path}: "):
                message = where + message[len(path) :]
        return InvalidRequest(message)

    def _path(self, path: str, frames: list[list[int]]) -> str:
        parts = [path]
        for is_map, declared, left, key_at in frames:
            if not is_map:
                parts.append(f"[{declared - left - 1}]")
                continue
            if key_at < 0:
                continue
            probe = _Reader(self.body, key_at)
            kind, length, _ = probe.head(path)
            raw = bytes(probe.view[probe.pos : probe.pos + min(length, 40)])
            parts.append(f"[{raw.decode('utf-8', 'replace') if kind == _STR else raw!r}]")
        return "".join(parts)


def decode_fields(body: bytes) -> Fields:
    """Decode a non-empty body (its size already checked) or raise an InvalidRequest naming the path."""
    offsets: dict[str, int] = {}
    try:
        ignored = _walk_top(_Reader(body), offsets)
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


def _walk_top(reader: _Reader, offsets: dict[str, int]) -> list[str]:
    """Pass 1: the top-level map's keys, every value checked and skipped; offsets of the known ones."""
    kind, length, _ = reader.head("body")
    if kind != _MAP:
        if kind in (_STR, _BIN):
            reader.pos += length
        if kind != _ARRAY and reader.pos < reader.end:
            # JSON or text starts with a byte msgpack reads as a small int: say what the body is not.
            raise InvalidRequest(
                f"body: expected a msgpack map, got {_KIND_NAMES[kind]} "
                f"followed by {reader.end - reader.pos} more bytes"
            )
        raise InvalidRequest(f"body: expected a map, got {_KIND_NAMES[kind]}")
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
    reader = _Reader(body, offsets["model"])
    kind, length, _ = reader.head("model")
    if kind == _MAP:
        names = _model_map(reader, length)
        for name in ("identifier", "version"):
            if name not in names:
                raise InvalidRequest(f"model[{name!r}]: required")
        model_id = _name(body, names["identifier"], "model['identifier']")
        version = _name(body, names["version"], "model['version']")
    elif kind == _STR:
        model_id = _name(body, offsets["model"], "model")
        if "version" not in offsets:
            raise InvalidRequest("version: required when model is a str")
        version = _name(body, offsets["version"], "version")
    else:
        raise InvalidRequest(f"model: expected map or str, got {_KIND_NAMES[kind]}")

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


def _model_map(reader: _Reader, length: int) -> dict[str, int]:
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
    reader = _Reader(body, at)
    kind, length, _ = reader.head(path)
    if kind != _STR:
        raise InvalidRequest(f"{path}: expected str, got {_KIND_NAMES[kind]}")
    if length > MAX_KEY_BYTES:
        raise InvalidRequest(f"{path}: key {reader.preview(length)!r}... is longer than {MAX_KEY_BYTES} bytes")
    return check_key(reader.text(length, path), path)


def _sources(body: bytes, at: int) -> tuple[dict[str, dict[str, bytes | str]], bool, bool]:
    reader = _Reader(body, at)
    kind, count, _ = reader.head("sources")
    if kind != _MAP:
        raise InvalidRequest(f"sources: expected map, got {_KIND_NAMES[kind]}")
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
        if kind != _MAP:
            raise InvalidRequest(f"{path}: expected map of model input to bin or str, got {_KIND_NAMES[kind]}")
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
    probe = _Reader(body, at)
    kinds: set[int] = set()
    shorthand = True
    for _ in range(count):
        probe.skip("sources", 2)
        kind, length, _ = probe.head("sources")
        if kind in (_STR, _BIN):
            kinds.add(kind)
            probe.pos += length
            continue
        shorthand = False
        if kind != _MAP:
            break  # the build pass says what is wrong here
        for _ in range(length):
            probe.skip("sources", 3)
            kind, length, _ = probe.head("sources")
            if kind not in (_STR, _BIN):
                break
            kinds.add(kind)
            probe.pos += length
        else:
            continue
        break
    return shorthand, _BIN in kinds, _STR in kinds


def _inputs(reader: _Reader, count: int, path: str, as_bytes: bool) -> dict[str, bytes | str]:
    """One input item's map of model input to data: each value built once, from the body's bytes."""
    out: dict[str, bytes | str] = {}
    for _ in range(count):
        key = check_key(reader.key(path), path)
        if key in out:
            raise InvalidRequest(f"{path}: key {key!r} given twice")
        where = f"{path}[{key!r}]"
        kind, length, _ = reader.head(where)
        if kind == _BIN:
            out[key] = reader.body[reader.pos : reader.pos + length]
            reader.pos += length
        elif kind == _STR and as_bytes:
            out[key] = reader.body[reader.pos : reader.pos + length]
            reader.check_text(length, where)
        elif kind == _STR:
            out[key] = reader.text(length, where)
        else:
            raise InvalidRequest(f"{where}: expected bin or str, got {_KIND_NAMES[kind]}")
    return out


def _optional_bool(body: bytes, offsets: dict[str, int], key: str, default: bool) -> bool:
    if key not in offsets:
        return default
    kind, _, value = _Reader(body, offsets[key]).head(key)
    if kind == _NIL:
        return default
    if kind != _BOOL:
        raise InvalidRequest(f"{key}: expected bool, got {_KIND_NAMES[kind]}")
    return bool(value)


def _timeout(body: bytes, offsets: dict[str, int]) -> float | None:
    if "timeout" not in offsets:
        return None
    kind, _, value = _Reader(body, offsets["timeout"]).head("timeout")
    if kind == _NIL:
        return None
    if kind not in (_INT, _FLOAT) or not isinstance(value, int | float):
        raise InvalidRequest(f"timeout: expected a number of seconds, got {_KIND_NAMES[kind]}")
    if not math.isfinite(value) or value <= 0:
        raise InvalidRequest(f"timeout: expected a positive finite number of seconds, got {value!r}")
    return float(value)


def _request_id(body: bytes, at: int) -> str | None:
    reader = _Reader(body, at)
    kind, length, _ = reader.head("request_id")
    if kind == _NIL:
        return None
    if kind != _STR:
        raise InvalidRequest(f"request_id: expected str, got {_KIND_NAMES[kind]}")
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
