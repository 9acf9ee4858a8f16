"""Hostile request bodies: shapes that cost a naive msgpack decoder many times their size.

Each shape is a generator of raw msgpack bytes of about a given size, placed at a known key (model, sources,
an input item, an input's value, request_id) or under a key the worker ignores. Used by the unit tests
(tests/test_messages.py: every case is refused with the right path, within the memory bound, under
tracemalloc) and by the integration test (tests/test_hostile_requests.py: the worker process's own peak
memory, with the real broker).

Bodies are assembled from raw bytes, never through msgpack.packb of Python objects: a million empty maps
would cost the test itself what it proves the worker no longer spends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import msgpack

from worker.messages import MAX_CONTAINER_LEN, MAX_DEPTH, MAX_INPUTS, MAX_OBJECTS

KIB = 1 << 10
MIB = 1 << 20
SIZES = {"1MiB": MIB, "8MiB": 8 * MIB}
SLACK = 4 * MIB  # the "few MiB" of the contract's bound

MODEL = {"identifier": "sha256", "version": "1.0.0"}
SOURCES = {"cam-1": {"image": b"\x00\x01"}}


def pack(value: object) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def map_header(count: int) -> bytes:
    if count < 16:
        return bytes([0x80 | count])
    if count < 1 << 16:
        return b"\xde" + count.to_bytes(2, "big")
    return b"\xdf" + count.to_bytes(4, "big")


def array_header(count: int) -> bytes:
    if count < 16:
        return bytes([0x90 | count])
    if count < 1 << 16:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def str_header(length: int) -> bytes:
    if length < 32:
        return bytes([0xA0 | length])
    if length < 1 << 8:
        return b"\xd9" + bytes([length])
    if length < 1 << 16:
        return b"\xda" + length.to_bytes(2, "big")
    return b"\xdb" + length.to_bytes(4, "big")


def bin_header(length: int) -> bytes:
    if length < 1 << 8:
        return b"\xc4" + bytes([length])
    if length < 1 << 16:
        return b"\xc5" + length.to_bytes(2, "big")
    return b"\xc6" + length.to_bytes(4, "big")


def raw_map(entries: list[tuple[bytes, bytes]]) -> bytes:
    """A msgpack map from already packed keys and values."""
    return map_header(len(entries)) + b"".join(k + v for k, v in entries)


# -- where a hostile value goes ----------------------------------------------------------------------
# Each placement wraps a raw value into a whole request and says which path the decoder names for it.


def _request(**raw: bytes) -> bytes:
    """A valid request with some of its values replaced (or added) as raw msgpack."""
    return _request_with({"model": pack(MODEL), "sources": pack(SOURCES), **raw})


def _request_with(entries: dict[str, bytes]) -> bytes:
    return raw_map([(pack(k), v) for k, v in entries.items()])


PLACES: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "model": (lambda v: _request(model=v), "model"),
    "model[identifier]": (
        lambda v: _request(model=raw_map([(pack("identifier"), v), (pack("version"), pack("1"))])),
        "model['identifier']",
    ),
    "sources": (lambda v: _request(sources=v), "sources"),
    "sources[x]": (lambda v: _request(sources=raw_map([(pack("cam-1"), v)])), "sources['cam-1']"),
    "sources[x][y]": (
        lambda v: _request(sources=raw_map([(pack("cam-1"), raw_map([(pack("image"), v)]))])),
        "sources['cam-1']['image']",
    ),
    "request_id": (lambda v: _request(request_id=v), "request_id"),
    "ignored": (lambda v: _request(x=v), "<ignored key 'x'>"),
}

# -- hostile values, by shape: (value of about n bytes, what the decoder says about it) ----------------


def tiny_maps(n: int) -> bytes:
    """Lists of 4096 empty maps: one Python dict per byte for a naive decoder (the measured 74x)."""
    inner = array_header(MAX_CONTAINER_LEN) + b"\x80" * MAX_CONTAINER_LEN
    count = max(1, n // len(inner))
    return array_header(count) + inner * count


def tiny_strs(n: int) -> bytes:
    """Lists of 4096 empty strs."""
    inner = array_header(MAX_CONTAINER_LEN) + b"\xa0" * MAX_CONTAINER_LEN
    count = max(1, n // len(inner))
    return array_header(count) + inner * count


def nested_maps(n: int) -> bytes:
    """Maps of 16 entries, each value a list of 16 empty maps: many small containers, three levels."""
    leaf = array_header(16) + b"\x80" * 16
    node = map_header(16) + b"".join(pack(f"k{i:02d}") + leaf for i in range(16))
    group = array_header(64) + node * 64
    count = max(1, n // len(group))
    return array_header(count) + group * count


def deep_arrays(n: int) -> bytes:
    """[[[[...]]]] as deep as the size allows."""
    return b"\x91" * (n - 1) + b"\xc0"


def deep_maps(n: int) -> bytes:
    """{"a": {"a": ...}} as deep as the size allows."""
    return b"\x81\xa1a" * ((n - 1) // 3) + b"\xc0"


def wide_array(n: int) -> bytes:
    """One array of n nils."""
    return array_header(n - 5) + b"\xc0" * (n - 5)


def wide_map(n: int) -> bytes:
    """One map of n/2 entries "": nil (a naive decoder keeps one; a dict of them is built first)."""
    count = (n - 5) // 2
    return map_header(count) + b"\xa0\xc0" * count


def wide_map_distinct(n: int) -> bytes:
    """One map of distinct 8-character keys: a dict of n/10 entries for a naive decoder."""
    count = (n - 5) // 10
    return map_header(count) + b"".join(b"\xa8" + f"{i:08x}".encode() + b"\xc0" for i in range(count))


def claim(header: bytes) -> Callable[[int], bytes]:
    def make(n: int) -> bytes:
        return header + b"\x00" * (n - len(header))

    return make


@dataclass(frozen=True)
class Shape:
    name: str
    value: Callable[[int], bytes]
    phrase: str  # what the decoder's message says, besides the path


_BAD = "not a valid msgpack message"
_SHAPES = [
    Shape("tiny_maps", tiny_maps, f"more than {MAX_OBJECTS} msgpack objects in the request"),
    Shape("tiny_strs", tiny_strs, f"more than {MAX_OBJECTS} msgpack objects in the request"),
    Shape("nested_maps", nested_maps, f"more than {MAX_OBJECTS} msgpack objects in the request"),
    Shape("deep_arrays", deep_arrays, f"[0]: nesting deeper than {MAX_DEPTH}"),
    Shape("deep_maps", deep_maps, f"['a']: nesting deeper than {MAX_DEPTH}"),
    Shape("wide_array", wide_array, f"items, more than {MAX_CONTAINER_LEN}"),
    Shape("wide_map", wide_map, f"entries, more than {MAX_CONTAINER_LEN}"),
    Shape("wide_map_distinct", wide_map_distinct, f"entries, more than {MAX_CONTAINER_LEN}"),
    Shape(
        "map32_claim",
        claim(b"\xdf\xff\xff\xff\xff"),
        "not a valid msgpack message (a map of 4294967295 entries declared",
    ),
    Shape(
        "array32_claim",
        claim(b"\xdd\xff\xff\xff\xff"),
        "not a valid msgpack message (an array of 4294967295 items declared",
    ),
    Shape(
        "str32_claim", claim(b"\xdb\xff\xff\xff\xff"), "not a valid msgpack message (a str of 4294967295 bytes declared"
    ),
    Shape(
        "bin32_claim", claim(b"\xc6\xff\xff\xff\xff"), "not a valid msgpack message (a bin of 4294967295 bytes declared"
    ),
]


@dataclass(frozen=True)
class Case:
    """One hostile body and what the decoder must say about it: a message holding the path and the phrase.

    A case without a phrase is a valid request after all (large, but within every bound): it must decode.
    The body is built when asked for, so that a test run holds one at a time, not the whole corpus.
    """

    id: str
    build: Callable[[], bytes]
    path: str
    phrase: str | None
    # Bound on decoding's memory: factor times the body's size, plus SLACK. 4 for every shape but one: a
    # valid str holding a character beyond U+FFFF is 4 bytes a character in Python, and CPython's UTF-8
    # decoder holds a 1-byte draft of it beside the result while widening (5 times the str, briefly).
    factor: int = 4

    def body(self) -> bytes:
        return self.build()

    def bound(self, body: bytes) -> int:
        return self.factor * len(body) + SLACK


def cases(size: int, label: str) -> list[Case]:
    """Every shape at every placement, then the shapes that only make sense in one place, at about `size`."""
    out = [
        Case(f"{shape.name}@{place}-{label}", partial(_placed, wrap, shape.value, size), path, shape.phrase)
        for shape in _SHAPES
        for place, (wrap, path) in PLACES.items()
    ]
    out.extend(
        Case(f"{name}-{label}", partial(build, size), path, phrase, factor=5 if "text_astral" in name else 4)
        for name, build, path, phrase in _SPECIALS
    )
    return out


def _placed(wrap: Callable[[bytes], bytes], value: Callable[[int], bytes], size: int) -> bytes:
    return wrap(value(size))


_TOP = {"model": pack(MODEL), "sources": pack(SOURCES)}
_LONG = "is longer than 255 bytes"


def _astral(size: int) -> str:
    return "x" * (size - 64) + "\U0001f600"  # one character outside the BMP: Python keeps 4 bytes a character


def _many_ignored_keys(size: int) -> bytes:
    return raw_map([*[(pack(k), v) for k, v in _TOP.items()], *((pack(f"{i:x}"), b"\xc0") for i in range(size // 8))])


def _many_sources(size: int) -> bytes:
    return _request(sources=raw_map([(pack(f"{i:x}"), b"\x81\xa1i\xc4\x00") for i in range(size // 12)]))


def _inputs_in_all(size: int) -> bytes:
    # 11 inputs per item: the item that takes the count over MAX_INPUTS is number MAX_INPUTS // 11.
    return _request(sources=pack({f"s{i}": {f"i{j}": b"" for j in range(11)} for i in range(MAX_INPUTS // 11 + 1)}))


_SPECIALS: list[tuple[str, Callable[[int], bytes], str, str | None]] = [  # (name, body of a size, path, phrase)
    ("long_top_level_key", lambda n: _request_with({**_TOP, "k" * n: b"\xc0"}), "body: key 'kkkk", _LONG),
    ("long_source_key", lambda n: _request(sources=pack({"k" * n: {"image": b"x"}})), "sources: key 'kkkk", _LONG),
    ("long_input_key", lambda n: _request(sources=pack({"c": {"k" * n: b"x"}})), "sources['c']: key 'kk", _LONG),
    (
        "long_model_id",
        lambda n: _request(model=pack({"identifier": "k" * n, "version": "1"})),
        "model['identifier']",
        _LONG,
    ),
    ("long_request_id", lambda n: _request(request_id=pack("k" * n)), "request_id", "expected 1 to 255 bytes"),
    ("long_key_in_ignored_map", lambda n: _request(x=pack({"k" * n: 1})), "", None),
    ("many_ignored_keys", _many_ignored_keys, "body", "entries, more than"),
    ("many_sources", _many_sources, "sources", f"entries, more than {MAX_CONTAINER_LEN}"),
    ("inputs_in_all", _inputs_in_all, f"sources['s{MAX_INPUTS // 11}']", f"more than {MAX_INPUTS} model inputs in all"),
    ("big_bin", lambda n: _request(sources=pack({"cam-1": {"image": b"\x01" * n}})), "", None),
    ("big_text_astral", lambda n: _request(sources=pack({"cam-1": {"input.txt": _astral(n)}})), "", None),
    ("big_mixed_astral", lambda n: _request(sources=pack({"c": {"t": _astral(n), "image": b"\x01"}})), "", None),
    ("big_ignored_str", lambda n: _request(x=pack(_astral(n))), "", None),
    (
        "duplicate_source",
        lambda n: _request(sources=b"\x82" + b"\xa1a\x81\xa1i\xc4\x00" * 2),
        "sources",
        "key 'a' given twice",
    ),
]
