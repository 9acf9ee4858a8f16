"""The bounded msgpack walk under worker.decode: a cursor that reads one header at a time from the body.

It builds only what it is asked to (a str, a key, a scalar) and checks the rest without building it
(Reader.skip): well-formed, declared lengths no longer than the bytes left, str valid UTF-8, map keys str or
bin, no ext types, under a budget of objects (MAX_OBJECTS), depth (MAX_DEPTH) and container lengths
(MAX_CONTAINER_LEN). The request's schema, and why the walk exists, are in worker.decode.
"""

from __future__ import annotations

import codecs
import struct

from worker.errors import InvalidRequest

MAX_KEY_BYTES = 255
MAX_DEPTH = 32  # the schema needs 3 levels; producers' own values get the rest
MAX_OBJECTS = 100_000  # every msgpack object in the body, built or skipped: bounds the walk's CPU time
MAX_CONTAINER_LEN = 4096  # entries of any one map or array outside the sources' own limits

_MALFORMED = "body: not a valid msgpack message"
# fixints, nil, false, true, the empty str
_ONE_BYTE = frozenset([*range(0x80), *range(0xE0, 0x100), 0xC0, 0xC2, 0xC3, 0xA0])
_EMPTY = frozenset([0x80, 0x90])  # the empty map and array
_CHECK_SLICE = 1 << 16  # bytes of a str checked as UTF-8 at a time

# Kinds of msgpack objects, as the contract names them in messages.
NIL, BOOL, INT, FLOAT, STR, BIN, ARRAY, MAP, EXT = range(9)
KIND_NAMES = ("nil", "bool", "int", "float", "str", "bin", "array", "map", "ext")

# Type bytes 0xc0..0xdf: (kind, bytes of length or value after the type byte, signed).
_HEADS: dict[int, tuple[int, int, bool]] = {
    0xC0: (NIL, 0, False),
    0xC2: (BOOL, 0, False),
    0xC3: (BOOL, 0, False),
    0xC4: (BIN, 1, False),
    0xC5: (BIN, 2, False),
    0xC6: (BIN, 4, False),
    0xC7: (EXT, 1, False),
    0xC8: (EXT, 2, False),
    0xC9: (EXT, 4, False),
    0xCA: (FLOAT, 4, False),
    0xCB: (FLOAT, 8, False),
    0xCC: (INT, 1, False),
    0xCD: (INT, 2, False),
    0xCE: (INT, 4, False),
    0xCF: (INT, 8, False),
    0xD0: (INT, 1, True),
    0xD1: (INT, 2, True),
    0xD2: (INT, 4, True),
    0xD3: (INT, 8, True),
    0xD4: (EXT, 0, False),
    0xD5: (EXT, 0, False),
    0xD6: (EXT, 0, False),
    0xD7: (EXT, 0, False),
    0xD8: (EXT, 0, False),
    0xD9: (STR, 1, False),
    0xDA: (STR, 2, False),
    0xDB: (STR, 4, False),
    0xDC: (ARRAY, 2, False),
    0xDD: (ARRAY, 4, False),
    0xDE: (MAP, 2, False),
    0xDF: (MAP, 4, False),
}


def malformed(detail: str, path: str) -> InvalidRequest:
    return InvalidRequest(f"{_MALFORMED} ({detail}, at {path})")


class Reader:
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
            return INT, 0, byte
        if byte >= 0xE0:
            self.pos = pos
            return INT, 0, byte - 0x100
        if byte <= 0x8F:
            kind, length = MAP, byte & 0x0F
        elif byte <= 0x9F:
            kind, length = ARRAY, byte & 0x0F
        elif byte <= 0xBF:
            kind, length = STR, byte & 0x1F
        else:
            entry = _HEADS.get(byte)
            if entry is None:
                raise malformed(f"byte 0x{byte:02x} at offset {pos - 1} is not a msgpack type", path)
            kind, size, signed = entry
            if kind == EXT:
                raise malformed("ext types are not accepted", path)
            if pos + size > self.end:
                raise malformed(f"the body ends inside a {KIND_NAMES[kind]} header", path)
            if kind == NIL:
                self.pos = pos
                return NIL, 0, None
            if kind == BOOL:
                self.pos = pos
                return BOOL, 0, byte == 0xC3
            if kind == FLOAT:
                self.pos = pos + size
                return FLOAT, 0, struct.unpack_from(">f" if size == 4 else ">d", body, pos)[0]
            number = int.from_bytes(body[pos : pos + size], "big", signed=signed)
            pos += size
            if kind == INT:
                self.pos = pos
                return INT, 0, number
            length = number
        self.pos = pos
        left = self.end - pos
        if kind in (STR, BIN) and length > left:
            raise malformed(f"a {KIND_NAMES[kind]} of {length} bytes declared, {left} bytes left", path)
        if kind == ARRAY and length > left:
            raise malformed(f"an array of {length} items declared, {left} bytes left", path)
        if kind == MAP and 2 * length > left:
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
        if kind != STR:
            raise InvalidRequest(f"{container}: keys must be str, got {KIND_NAMES[kind]}")
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
                if kind not in (STR, BIN):
                    where = self._path(path, frames)
                    raise InvalidRequest(f"{where}: map keys must be str or bin, got {KIND_NAMES[kind]}")
                frames[-1][3] = at
            if kind == STR:
                try:
                    self.check_text(length, path)
                except InvalidRequest as exc:
                    raise self._at(exc, path, frames) from None
            elif kind == BIN:
                self.pos += length
            elif kind in (ARRAY, MAP):
                if depth + len(frames) > MAX_DEPTH:
                    raise InvalidRequest(f"{self._path(path, frames)}: nesting deeper than {MAX_DEPTH}")
                if length > MAX_CONTAINER_LEN:
                    noun = "items" if kind == ARRAY else "entries"
                    where = self._path(path, frames)
                    raise InvalidRequest(
                        f"{where}: {KIND_NAMES[kind]} of {length} {noun}, more than {MAX_CONTAINER_LEN}"
                    )
                if length:
                    is_map = int(kind == MAP)
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
            probe = Reader(self.body, key_at)
            kind, length, _ = probe.head(path)
            raw = bytes(probe.view[probe.pos : probe.pos + min(length, 40)])
            parts.append(f"[{raw.decode('utf-8', 'replace') if kind == STR else raw!r}]")
        return "".join(parts)
