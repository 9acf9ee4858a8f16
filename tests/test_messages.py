"""Request decoding (§1) and reply helpers (§2): pure logic, no broker."""

from __future__ import annotations

import contextlib
import tracemalloc
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import hostile
from worker.errors import InvalidRequest, PayloadTooLarge, UnsupportedContentType
from worker.messages import (
    MAX_DEPTH,
    MAX_INPUTS,
    MAX_INPUTS_PER_SOURCE,
    MAX_OBJECTS,
    MAX_SOURCES,
    JobRequest,
    check_content_type,
    decode_request,
    empty_reply,
    encode_reply,
    reply_properties_fields,
    route_from_properties,
)

LIMIT = 1 << 20
MODEL = {"identifier": "sha256", "version": "1.0.0"}
SOURCES = {"cam-1": {"image": b"\x00\x01"}}


def pack(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def decode(value: Any, content_type: str | None = "application/msgpack", *, limit: int = LIMIT) -> JobRequest:
    return decode_request(pack(value), content_type, max_request_bytes=limit)


def rejected(body: bytes, content_type: str | None = "application/msgpack", *, limit: int = LIMIT) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        decode_request(body, content_type, max_request_bytes=limit)
    return info.value


def request(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": MODEL, "sources": SOURCES}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP: Any = object()


# -- valid requests ------------------------------------------------------------------------------


def test_full_request_decodes_every_field() -> None:
    decoded = decode(
        request(
            sources={"cam-1": {"image": b"\x89PNG", "mask": b"\x00"}, "cam-2": {"image": b"\xff"}},
            explain=True,
            timeout=12.5,
            results=False,
            updates=True,
            request_id="req-1",
        )
    )
    assert decoded.model_id == "sha256"
    assert decoded.version == "1.0.0"
    assert decoded.sources == {"cam-1": {"image": b"\x89PNG", "mask": b"\x00"}, "cam-2": {"image": b"\xff"}}
    assert decoded.input_type == "embedded"
    assert decoded.explain is True
    assert decoded.timeout_s == 12.5
    assert decoded.want_results is False
    assert decoded.want_updates is True
    assert decoded.request_id == "req-1"
    assert decoded.input_sizes() == {"cam-1": {"image": 4, "mask": 1}, "cam-2": {"image": 1}}


def test_defaults_when_optional_fields_are_absent_or_nil() -> None:
    for decoded in (decode(request()), decode(request(explain=None, timeout=None, results=None, updates=None))):
        assert decoded.explain is False
        assert decoded.timeout_s is None
        assert decoded.want_results is True
        assert decoded.want_updates is False
        assert decoded.request_id is None


def test_size_bytes_is_the_body_length() -> None:
    body = pack(request())
    assert decode_request(body, None, max_request_bytes=LIMIT).size_bytes == len(body)


def test_all_str_values_make_a_text_job() -> None:
    decoded = decode(request(sources={"a": {"input.txt": "héllo"}, "b": {"input.txt": "wörld"}}))
    assert decoded.input_type == "text"
    assert decoded.sources == {"a": {"input.txt": "héllo"}, "b": {"input.txt": "wörld"}}
    assert decoded.input_sizes() == {"a": {"input.txt": len("héllo".encode())}, "b": {"input.txt": 6}}


def test_mixed_bin_and_str_is_embedded_with_str_as_utf8() -> None:
    decoded = decode(request(sources={"a": {"image": b"\x00\xff", "caption": "snow ☃"}, "b": {"t": "é"}}))
    assert decoded.input_type == "embedded"
    assert decoded.sources == {"a": {"image": b"\x00\xff", "caption": "snow ☃".encode()}, "b": {"t": b"\xc3\xa9"}}


def test_one_level_shorthand_is_source_job() -> None:
    assert decode(request(sources={"image": b"\x01", "meta": b"\x02"})).sources == {
        "job": {"image": b"\x01", "meta": b"\x02"}
    }
    text = decode(request(sources={"input.txt": "hi"}))
    assert text.sources == {"job": {"input.txt": "hi"}}
    assert text.input_type == "text"


def test_str_model_with_version() -> None:
    decoded = decode({"model": "ed542963de", "version": "1.0.1", "sources": SOURCES})
    assert (decoded.model_id, decoded.version) == ("ed542963de", "1.0.1")


def test_unknown_keys_are_ignored_and_listed() -> None:
    decoded = decode(request(my_trace="x", zz={"a": 1}))
    assert decoded.ignored_keys == ("my_trace", "zz")


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "application/msgpack",
        "application/x-msgpack",
        "application/vnd.msgpack",
        "Application/MsgPack; charset=binary",
    ],
)
def test_msgpack_content_types_are_accepted(content_type: str | None) -> None:
    check_content_type(content_type)
    assert decode(request(), content_type).model_id == "sha256"


def test_key_of_exactly_255_bytes_is_accepted() -> None:
    key = "k" * 255
    assert decode(request(sources={key: {key: b"x"}})).sources == {key: {key: b"x"}}


def test_integer_timeout_becomes_float_seconds() -> None:
    assert decode(request(timeout=3)).timeout_s == 3.0


# -- every error path, with its message ----------------------------------------------------------

MALFORMED: list[tuple[str, Any, str]] = [
    # (id, request map, expected message)
    ("missing model", request(model=_DROP), "model: required"),
    ("model wrong type", request(model=5), "model: expected map or str, got int"),
    ("model list", request(model=["a", "b"]), "model: expected map or str, got array"),
    ("model map missing version", request(model={"identifier": "sha256"}), "model['version']: required"),
    ("model map missing identifier", request(model={"version": "1"}), "model['identifier']: required"),
    (
        "model version not str",
        request(model={"identifier": "a", "version": 1}),
        "model['version']: expected str, got int",
    ),
    ("model identifier empty", request(model={"identifier": "", "version": "1"}), "model['identifier']: "),
    ("model identifier with slash", request(model={"identifier": "a/b", "version": "1"}), "must not contain '/'"),
    ("str model without version", {"model": "sha256", "sources": SOURCES}, "version: required when model is a str"),
    (
        "str model with nil version",
        {"model": "sha256", "version": None, "sources": SOURCES},
        "version: expected str, got nil",
    ),
    ("missing sources", request(sources=_DROP), "sources: required"),
    ("sources not a map", request(sources=[b"x"]), "sources: expected map, got array"),
    ("empty sources", request(sources={}), "sources: expected at least one input item, got an empty map"),
    (
        "source not a map",
        request(sources={"cam-1": {"image": b"x"}, "cam-2": [1]}),
        "sources['cam-2']: expected map of model input to bin or str, got array",
    ),
    ("source empty map", request(sources={"cam-1": {}}), "sources['cam-1']: expected at least one model input"),
    (
        "value of wrong type",
        request(sources={"cam-1": {"image": 5}}),
        "sources['cam-1']['image']: expected bin or str, got int",
    ),
    (
        "value nil",
        request(sources={"cam-1": {"image": None}}),
        "sources['cam-1']['image']: expected bin or str, got nil",
    ),
    (
        "value float",
        request(sources={"cam-1": {"image": 1.5}}),
        "sources['cam-1']['image']: expected bin or str, got float",
    ),
    ("source key with slash", request(sources={"cam/1": {"image": b"x"}}), "sources: key 'cam/1' must not contain '/'"),
    ("input key with slash", request(sources={"cam": {"a/b": b"x"}}), "sources['cam']: key 'a/b' must not contain '/'"),
    ("empty source key", request(sources={"": {"image": b"x"}}), "sources: keys must be non-empty"),
    ("empty input key", request(sources={"cam": {"": b"x"}}), "sources['cam']: keys must be non-empty"),
    ("control char in source key", request(sources={"cam\n1": {"image": b"x"}}), "must not contain control characters"),
    ("DEL in input key", request(sources={"cam": {"i\x7f": b"x"}}), "must not contain control characters"),
    ("C1 control in input key", request(sources={"cam": {"i\x85": b"x"}}), "must not contain control characters"),
    ("bin key", request(sources={"cam": {b"image": b"x"}}), "sources['cam']: keys must be str, got bin"),
    ("key over 255 bytes", request(sources={"k" * 256: {"image": b"x"}}), "is longer than 255 bytes"),
    ("key over 255 bytes in utf-8", request(sources={"cam": {"é" * 128: b"x"}}), "is longer than 255 bytes"),
    (
        "too many sources",
        request(sources={f"s{i}": {"i": b""} for i in range(MAX_SOURCES + 1)}),
        f"sources: {MAX_SOURCES + 1} input items exceeds {MAX_SOURCES}",
    ),
    (
        "too many inputs",
        request(sources={"s": {f"i{i}": b"" for i in range(MAX_INPUTS_PER_SOURCE + 1)}}),
        f"sources['s']: {MAX_INPUTS_PER_SOURCE + 1} model inputs exceeds",
    ),
    ("explain not bool", request(explain="yes"), "explain: expected bool, got str"),
    ("explain int", request(explain=1), "explain: expected bool, got int"),
    ("results not bool", request(results=0), "results: expected bool, got int"),
    ("updates not bool", request(updates="true"), "updates: expected bool, got str"),
    ("timeout negative", request(timeout=-1), "timeout: expected a positive finite number of seconds, got -1"),
    ("timeout zero", request(timeout=0), "timeout: expected a positive finite number of seconds, got 0"),
    ("timeout nan", request(timeout=float("nan")), "got nan"),
    ("timeout infinite", request(timeout=float("inf")), "got inf"),
    ("timeout a string", request(timeout="10"), "timeout: expected a number of seconds, got str"),
    ("timeout a bool", request(timeout=True), "timeout: expected a number of seconds, got bool"),
    ("request_id not str", request(request_id=5), "request_id: expected str, got int"),
    ("request_id empty", request(request_id=""), "request_id: expected 1 to 255 bytes"),
    ("request_id too long", request(request_id="r" * 256), "request_id: expected 1 to 255 bytes"),
]


@pytest.mark.parametrize(("body", "message"), [(b, m) for _, b, m in MALFORMED], ids=[i for i, _, _ in MALFORMED])
def test_malformed_request_is_invalid_with_a_message_naming_the_path(body: Any, message: str) -> None:
    error = rejected(pack(body))
    assert error.code == "INVALID_REQUEST"
    assert message in error.message
    assert error.as_reply_error() == {"code": "INVALID_REQUEST", "message": error.message, "retryable": False}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "body: empty"),
        (b"\xc1", "body: not a valid msgpack message"),
        (b"\x82\xa5model", "body: not a valid msgpack message"),  # a map cut short
        (pack([1, 2]), "body: expected a map, got array"),
        (pack("model"), "body: expected a map, got str"),
        (pack(None), "body: expected a map, got nil"),
        (pack(request()) + b"\x00", "body: trailing bytes after the msgpack map"),
        (b'{"model": "sha256"}', "body: expected a msgpack map"),  # JSON: a fixint 0x7b, then the rest
        (b"hello world", "body: expected a msgpack map"),
        (msgpack.packb({"model": b"\xff\xfe"}, use_bin_type=False), "not valid UTF-8"),  # raw str, not bin
        (pack({1: 2}), "body: keys must be str, got int"),
        (msgpack.packb({"x": msgpack.ExtType(1, b"x")}), "not a valid msgpack message"),  # ext types are refused
        (b"\x91" * 100_000, "body: expected a map, got array"),  # refused by its first byte, not walked
    ],
    ids=[
        "empty",
        "reserved byte",
        "truncated",
        "array",
        "str",
        "nil",
        "trailing bytes",
        "json",
        "text",
        "invalid utf-8",
        "int map key",
        "ext type",
        "deep nesting",
    ],
)
def test_undecodable_body_is_invalid(body: bytes, message: str) -> None:
    error = rejected(body)
    assert error.code == "INVALID_REQUEST"
    assert message in error.message


@pytest.mark.parametrize(
    "header",
    [
        b"\xdf\x80\x00\x00\x00",  # map 32 claiming 2**31 entries
        b"\xdf\xff\xff\xff\xff",  # map 32 claiming 2**32 - 1 entries
        b"\xdd\x80\x00\x00\x00",  # array 32 claiming 2**31 items
        b"\xde\xff\xff",  # map 16 claiming 65535 entries (over the container bound, under any byte bound)
        b"\xdb\x7f\xff\xff\xff",  # str 32 claiming 2 GiB
        b"\xc6\x7f\xff\xff\xff",  # bin 32 claiming 2 GiB
    ],
    ids=["map32-2^31", "map32-max", "array32", "map16-max", "str32", "bin32"],
)
def test_hostile_container_header_is_refused_without_allocating(header: bytes) -> None:
    body = header + b"\x00" * 64
    tracemalloc.start()
    try:
        error = rejected(body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.code == "INVALID_REQUEST"
    assert "not a valid msgpack message" in error.message
    assert peak < 1 << 20, f"decoding a {len(body)}-byte body allocated {peak} bytes"


@pytest.mark.parametrize("kind", ["array", "map"])
def test_container_claim_backed_by_real_bytes_is_refused_before_building_it(kind: str) -> None:
    # msgpack's own default bound is the buffer length: a few MB of body could make it build a list of
    # millions of items (36 MB measured for this array) or a dict of 262144 entries (30 MB) before the request is
    # even looked at.
    count = 1 << 22 if kind == "array" else 1 << 18
    header = (b"\xdd" if kind == "array" else b"\xdf") + count.to_bytes(4, "big")
    if kind == "array":
        items = b"\xc0" * count  # nil, nil, ...
        body = b"\x83" + pack("model") + pack(MODEL) + pack("sources") + pack(SOURCES) + pack("x") + header + items
        expected = f"<ignored key 'x'>: array of {count} items, more than 4096"
    else:
        items = b"".join(b"\xa8" + f"{i:08x}".encode() + b"\xc0" for i in range(count))  # "0000002a": nil
        body = header + items
        expected = f"body: map of {count} entries, more than 4096"
    tracemalloc.start()
    try:
        error = rejected(body, limit=len(body))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.message == expected
    assert peak < 1 << 20, f"decoding allocated {peak} bytes"


def test_container_bound_still_allows_the_largest_valid_request() -> None:
    # MAX_SOURCES input items must get through msgpack's container bound to reach the precise check.
    sources = {f"s{i}": {"i": b""} for i in range(MAX_SOURCES)}
    assert len(decode(request(sources=sources)).sources) == MAX_SOURCES


def test_largest_valid_request_decodes_within_the_bound() -> None:
    # MAX_SOURCES items sharing MAX_INPUTS inputs, every key 255 bytes: the most Python objects a valid
    # request builds, so the per-input overhead is what the memory bound must absorb.
    per_source = MAX_INPUTS // MAX_SOURCES
    sources = {
        f"{s:04d}".ljust(255, "s"): {f"{i:04d}".ljust(255, "i"): b"" for i in range(per_source)}
        for s in range(MAX_SOURCES)
    }
    body = pack(request(sources=sources))
    tracemalloc.start()
    try:
        decoded = decode_request(body, None, max_request_bytes=len(body))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(len(inputs) for inputs in decoded.sources.values()) == MAX_INPUTS
    assert peak < 4 * len(body) + hostile.SLACK, f"{peak} bytes for a {len(body)}-byte body"


def test_budget_limits_are_exact() -> None:
    # One under each limit decodes; one over is refused, naming the path.
    deep = b"\x91" * (MAX_DEPTH - 1) + b"\xc0"  # the value sits at depth 2: 31 more arrays reach 32
    assert decode_request(hostile._request(x=deep), None, max_request_bytes=LIMIT).ignored_keys == ("x",)
    error = rejected(hostile._request(x=b"\x91" + deep))
    assert error.message == f"<ignored key 'x'>{'[0]' * (MAX_DEPTH - 1)}: nesting deeper than {MAX_DEPTH}"
    # Objects before x's value: the top map; "model", its map, 2 keys, 2 values; "sources", its map, "cam-1",
    # its map, "image", the bin; the key "x". Then x: a list holding 24 lists of 4096 nils, then `rest` nils.
    fixed = 14
    rest = MAX_OBJECTS - fixed - (1 + 24 + 24 * 4096)
    inner = hostile.array_header(4096) + b"\xc0" * 4096

    def filled(rest: int) -> bytes:
        return hostile._request(x=hostile.array_header(24 + rest) + inner * 24 + b"\xc0" * rest)

    assert decode_request(filled(rest), None, max_request_bytes=LIMIT).ignored_keys == ("x",)
    error = rejected(filled(rest + 1))
    assert error.message == f"<ignored key 'x'>[{24 + rest}]: more than {MAX_OBJECTS} msgpack objects in the request"


def test_too_many_inputs_in_all_is_refused() -> None:
    per_source = MAX_INPUTS // MAX_SOURCES
    sources = {f"s{s}": {f"i{i}": b"" for i in range(per_source)} for s in range(MAX_SOURCES)}
    assert len(decode(request(sources=sources)).sources) == MAX_SOURCES
    sources["s0"]["one-more"] = b""
    error = rejected(pack(request(sources=sources)))
    assert error.message == f"sources['s{MAX_SOURCES - 1}']: more than {MAX_INPUTS} model inputs in all the input items"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\x82\xa5model" + pack(MODEL) + b"\xa5model" + pack(MODEL), "body: key 'model' given twice"),
        (b"\x82\xa1x\x01\xa1x\x02", "body: key 'x' given twice"),
        (
            hostile._request(model=b"\x83\xaaidentifier\xa1a\xa7version\xa11\xaaidentifier\xa1b"),
            "model: key 'identifier' given twice",
        ),
        (hostile._request(sources=b"\x81\xa1s\x82\xa1i\xc4\x00\xa1i\xc4\x00"), "sources['s']: key 'i' given twice"),
        (hostile._request(sources=b"\x82\xa1i\xc4\x00\xa1i\xc4\x00"), "sources['job']: key 'i' given twice"),
    ],
    ids=["known top-level key", "ignored top-level key", "model key", "input key", "shorthand key"],
)
def test_duplicate_keys_are_refused(body: bytes, message: str) -> None:
    assert message in rejected(body).message


def test_error_message_is_capped() -> None:
    # Deep maps under 40-byte keys: the path alone is longer than a message may be.
    key = b"\xd9\x28" + b"k" * 40  # a str8 of 40 bytes
    error = rejected(hostile._request(x=(b"\x81" + key) * (MAX_DEPTH + 1) + b"\xc0"))
    assert len(error.message) == 1000
    assert error.message.startswith("<ignored key 'x'>['kkkk")
    assert error.message.endswith("...")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"\x81\x01\xc0", "<ignored key 'x'>: map keys must be str or bin, got int"),
        (b"\x91\x81\xc0\xc0", "<ignored key 'x'>[0]: map keys must be str or bin, got nil"),
        (b"\x81\xa1k\xd4\x01\x00", "ext types are not accepted, at <ignored key 'x'>['k'])"),
        (b"\x92\xc0\xa2\xff\xfe", "not valid UTF-8 (send bytes as bin), at <ignored key 'x'>[1]"),
        (b"\x92\xc0\xc1", "byte 0xc1 at offset"),
        (b"\x93\xc0\xc0", "an array of 3 items declared, 2 bytes left, at <ignored key 'x'>)"),
        (b"\x92\x91\xc0", "the body ends where a value should start, at <ignored key 'x'>[1])"),
    ],
    ids=["int key", "nil key in a list", "ext", "invalid utf-8", "reserved byte", "short claim", "truncated"],
)
def test_ignored_values_are_checked_without_being_built(value: bytes, message: str) -> None:
    assert message in rejected(hostile._request(x=value)).message


def _hostile_cases() -> list[hostile.Case]:
    return [case for label, size in hostile.SIZES.items() for case in hostile.cases(size, label)]


@pytest.mark.parametrize("case", _hostile_cases(), ids=lambda case: case.id)
def test_hostile_shape_is_refused_naming_the_path(case: hostile.Case) -> None:
    body = case.body()
    try:
        decoded = decode_request(body, None, max_request_bytes=64 << 20)
    except InvalidRequest as exc:
        assert case.phrase is not None, f"a valid request was refused: {exc.message}"
        assert exc.code == "INVALID_REQUEST"
        assert case.phrase in exc.message
        assert case.path in exc.message
        assert len(exc.message) < 400
    else:
        assert case.phrase is None, f"accepted, expected {case.path}: {case.phrase}"
        assert decoded.size_bytes == len(body)


@pytest.mark.parametrize("case", hostile.cases(hostile.SIZES["8MiB"], "8MiB"), ids=lambda case: case.id)
def test_hostile_shape_decodes_within_the_memory_bound(case: hostile.Case) -> None:
    body = case.body()
    tracemalloc.start()
    try:
        with contextlib.suppress(InvalidRequest):
            decode_request(body, None, max_request_bytes=64 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= case.bound(body), f"{peak / 2**20:.1f} MiB for a {len(body) / 2**20:.1f} MiB body"


def test_body_over_max_request_bytes_is_payload_too_large_before_decoding() -> None:
    body = b"\xc1" * 2048  # not even msgpack: the size is checked first
    with pytest.raises(PayloadTooLarge) as info:
        decode_request(body, None, max_request_bytes=1024)
    assert info.value.code == "PAYLOAD_TOO_LARGE"
    assert "2048 bytes exceeds worker.max_request_bytes (1024)" in info.value.message


def test_body_of_exactly_max_request_bytes_is_decoded() -> None:
    filler = 1024 - len(pack(request(sources={"job": {"i": b""}})))
    body = pack(request(sources={"job": {"i": b"x" * (filler - 1)}}))  # bin 8 -> bin 16 header grows by one
    assert len(body) == 1024
    assert decode_request(body, None, max_request_bytes=1024).size_bytes == 1024


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", "application/msgpackx", "msgpack"])
def test_unsupported_content_type(content_type: str) -> None:
    with pytest.raises(UnsupportedContentType) as info:
        decode_request(pack(request()), content_type, max_request_bytes=LIMIT)
    assert info.value.code == "UNSUPPORTED_CONTENT_TYPE"
    assert repr(content_type) in info.value.message
    assert "application/msgpack" in info.value.message


def test_rejection_echoes_a_valid_request_id() -> None:
    error = rejected(pack(request(explain="yes", request_id="r-7")))
    assert error.request_id == "r-7"


@pytest.mark.parametrize("request_id", ["", "r" * 256, "r" * 200_000])
def test_rejection_does_not_echo_an_invalid_request_id(request_id: str) -> None:
    # An invalid request_id must not travel into the reply's body and AMQP headers (a huge one would not
    # fit in a frame and would kill the connection).
    error = rejected(pack(request(request_id=request_id)), limit=1 << 22)
    assert error.request_id is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_invalid_request(body: bytes) -> None:
    try:
        decode_request(body, None, max_request_bytes=1024)
    except InvalidRequest as exc:
        assert exc.message


_keys = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="/"), min_size=1, max_size=20
).filter(lambda key: len(key.encode()) <= 255)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        _keys, st.dictionaries(_keys, st.binary(max_size=50), min_size=1, max_size=3), min_size=1, max_size=4
    )
)
def test_any_valid_two_level_sources_round_trip(sources: dict[str, dict[str, bytes]]) -> None:
    decoded = decode(request(sources=sources))
    assert decoded.sources == sources
    assert decoded.input_type == "embedded"


# -- reply helpers -------------------------------------------------------------------------------


def test_route_reads_properties_and_falls_back_to_message_id() -> None:
    route = route_from_properties(SimpleNamespace(reply_to="q", correlation_id="c", message_id="m"))
    assert (route.reply_to, route.correlation_id, route.message_id) == ("q", "c", "m")
    fallback = route_from_properties(SimpleNamespace(reply_to=None, correlation_id=None, message_id="m"))
    assert (fallback.reply_to, fallback.correlation_id) == (None, "m")
    assert route_from_properties(SimpleNamespace()).correlation_id is None


def test_route_idempotency_key_prefers_message_id() -> None:
    route = route_from_properties(SimpleNamespace(message_id=None))
    assert route.idempotency_key is None
    from dataclasses import replace

    assert replace(route, request_id="r").idempotency_key == "r"
    assert replace(route_from_properties(SimpleNamespace(message_id="m")), request_id="r").idempotency_key == "m"


def test_reply_properties() -> None:
    from dataclasses import replace

    route = replace(route_from_properties(SimpleNamespace(correlation_id="c", message_id="m")), request_id="r")
    fields = reply_properties_fields({"status": "COMPLETE", "final": True}, route)
    assert fields["content_type"] == "application/msgpack"
    assert fields["delivery_mode"] == 2
    assert fields["type"] == "job.status"
    assert fields["correlation_id"] == "c"
    assert fields["message_id"] not in (None, "", "m")
    assert isinstance(fields["timestamp"], int) and fields["timestamp"] > 1_600_000_000
    assert fields["headers"] == {"status": "COMPLETE", "final": True, "request_id": "r"}
    other = reply_properties_fields({"status": "COMPLETE", "final": True}, route)
    assert other["message_id"] != fields["message_id"]
    no_request_id = reply_properties_fields({"status": "SUBMITTED", "final": False}, replace(route, request_id=None))
    assert no_request_id["headers"] == {"status": "SUBMITTED", "final": False}


def test_empty_reply_has_every_documented_key() -> None:
    route = route_from_properties(SimpleNamespace(correlation_id="c", message_id="m"))
    reply = msgpack.unpackb(encode_reply(empty_reply(route, status="REJECTED", final=True)), raw=False)
    for key in (
        "status",
        "final",
        "job_identifier",
        "request_id",
        "correlation_id",
        "model",
        "explain",
        "total",
        "pending",
        "completed",
        "failed",
        "job_inputs",
        "created_at",
        "updated_at",
        "submitted_at",
        "finished_at",
        "elapsed_ms",
    ):
        assert key in reply, key
    assert reply["status"] == "REJECTED"
    assert reply["final"] is True
    assert reply["job_identifier"] is None
    assert reply["correlation_id"] == "c"
    assert reply["finished_at"].endswith("Z")
