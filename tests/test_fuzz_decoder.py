"""Property-based fuzzing of the request decoder: whatever arrives, the result is a JobRequest or InvalidRequest.

Five generators, 12,500 examples in all (hypothesis counts each one; see the settings): valid requests
(which must decode, to the values they carry), valid requests with random byte mutations (flips,
truncations, insertions, deletions, splices), arbitrary msgpack objects (as a body, and under a key the
worker ignores, where any of them is accepted), and arbitrary bytes under arbitrary content types.

The decoder walks msgpack headers itself (worker.decode), so whatever it accepts is checked against msgpack's
own unpacker: the body must unpack, and to the values the JobRequest holds.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.decode import KNOWN_KEYS
from worker.errors import InvalidRequest
from worker.messages import JobRequest, decode_request

LIMIT = 1 << 20
_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large]


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, suppress_health_check=_HEALTH)


# Keys the contract accepts: non-empty, no "/", no control characters, at most 255 bytes.
KEYS = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="/"), min_size=1, max_size=12
)
INT64 = st.integers(-(2**63), 2**64 - 1)  # what msgpack can carry
VALUES = st.one_of(st.binary(max_size=64), st.text(max_size=32))
INPUTS = st.dictionaries(KEYS, VALUES, min_size=1, max_size=3)
TWO_LEVEL = st.dictionaries(KEYS, INPUTS, min_size=1, max_size=3)


@st.composite
def valid_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A request the contract says is valid, with every optional key sometimes present."""
    identifier, version = draw(KEYS), draw(KEYS)
    out: dict[str, Any] = {}
    if draw(st.booleans()):
        out["model"] = {"identifier": identifier, "version": version}
    else:
        out["model"], out["version"] = identifier, version
    # A one-level map is the SDK's shorthand for {"job": {...}}.
    out["sources"] = draw(st.one_of(TWO_LEVEL, INPUTS))
    optional = {
        "explain": st.booleans(),
        "results": st.booleans(),
        "updates": st.booleans(),
        "timeout": st.one_of(st.integers(1, 10_000), st.floats(0.001, 1e6)),
        "request_id": st.text(min_size=1, max_size=40),
        "producer-extra": st.one_of(st.none(), INT64, st.text(max_size=8)),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            out[key] = draw(strategy)
    return out


def pack(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def decode_or_reject(body: bytes, content_type: str | None = "application/msgpack") -> JobRequest | InvalidRequest:
    """The property itself: anything other than these two outcomes escapes as a test failure."""
    try:
        decoded = decode_request(body, content_type, max_request_bytes=LIMIT)
    except InvalidRequest as exc:
        assert exc.message, "an InvalidRequest must say what is wrong"
        assert exc.code in {"INVALID_REQUEST", "UNSUPPORTED_CONTENT_TYPE", "PAYLOAD_TOO_LARGE"}
        return exc
    agrees_with_msgpack(body, decoded)
    return decoded


def agrees_with_msgpack(body: bytes, decoded: JobRequest) -> None:
    """An accepted body is one msgpack map, and holds what the JobRequest says it does."""
    data = msgpack.unpackb(body, raw=False, strict_map_key=True)
    assert isinstance(data, dict)
    model = data["model"]
    if isinstance(model, dict):
        assert (decoded.model_id, decoded.version) == (model["identifier"], model["version"])
    else:
        assert (decoded.model_id, decoded.version) == (model, data["version"])
    sources = data["sources"]
    if all(isinstance(v, bytes | str) for v in sources.values()):
        sources = {"job": sources}
    if decoded.input_type == "embedded":
        sources = {s: {k: v.encode() if isinstance(v, str) else v for k, v in i.items()} for s, i in sources.items()}
    assert decoded.sources == sources
    assert decoded.explain is (data.get("explain") or False)
    assert decoded.want_results is (True if data.get("results") is None else data["results"])
    assert decoded.want_updates is (data.get("updates") or False)
    assert decoded.request_id == data.get("request_id")
    if data.get("timeout") is None:
        assert decoded.timeout_s is None
    else:
        assert decoded.timeout_s == float(data["timeout"])
    assert decoded.ignored_keys == tuple(sorted(k for k in data if k not in KNOWN_KEYS))


@fuzz(1500)
@given(valid_requests())
def test_valid_requests_decode_to_what_they_carry(request: dict[str, Any]) -> None:
    decoded = decode_or_reject(pack(request))
    assert isinstance(decoded, JobRequest), decoded
    model = request["model"]
    assert decoded.model_id == (model["identifier"] if isinstance(model, dict) else model)
    assert decoded.request_id == request.get("request_id")
    assert decoded.explain == request.get("explain", False)
    assert decoded.want_results == request.get("results", True)
    if "timeout" in request:
        assert decoded.timeout_s is not None and math.isclose(decoded.timeout_s, request["timeout"])
    sources = request["sources"]
    if all(isinstance(v, bytes | str) for v in sources.values()):
        sources = {"job": sources}
    assert set(decoded.sources) == set(sources)
    assert decoded.input_type == (
        "embedded" if any(isinstance(v, bytes) for inputs in sources.values() for v in inputs.values()) else "text"
    )


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid request's bytes after one to four random edits."""
    body = bytearray(pack(draw(valid_requests())))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "splice", "set"]))
        at = draw(st.integers(0, max(0, len(body) - 1)))
        if kind == "flip" and body:
            body[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del body[at:]
        elif kind == "insert":
            body[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del body[at : at + draw(st.integers(1, 8))]
        elif kind == "splice":
            body[at:at] = pack(draw(st.one_of(INT64, st.text(max_size=4), st.binary(max_size=4))))
        elif kind == "set" and body:
            # Byte values that start msgpack containers and large strings: lengths that lie about what follows.
            body[at] = draw(st.sampled_from([0xC1, 0xC4, 0xC5, 0xC6, 0xD9, 0xDA, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF]))
    return bytes(body)


@fuzz(5000)
@given(mutated())
def test_mutated_requests_decode_or_are_rejected(body: bytes) -> None:
    decode_or_reject(body)


MSGPACK_OBJECTS = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        INT64,
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=16),
        st.binary(max_size=16),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.sampled_from(["model", "sources", "version"])), children),
    ),
    max_leaves=20,
)


@fuzz(3000)
@given(MSGPACK_OBJECTS)
def test_arbitrary_msgpack_objects_decode_or_are_rejected(value: Any) -> None:
    decode_or_reject(pack(value))


@fuzz(2000)
@given(MSGPACK_OBJECTS, st.text(max_size=300), st.binary(max_size=300))
def test_any_msgpack_value_under_an_ignored_key_is_accepted(value: Any, text: str, data: bytes) -> None:
    # The walker that checks ignored values without building them must accept every well-formed value:
    # each type, each header size (the str and bin reach the 8- and 16-bit length headers).
    request = {"model": {"identifier": "m", "version": "1"}, "sources": {"s": {"i": b""}}, "x": [value, text, data]}
    decoded = decode_or_reject(pack(request))
    assert isinstance(decoded, JobRequest), decoded
    assert decoded.ignored_keys == ("x",)


@fuzz(1000)
@given(
    st.binary(max_size=256),
    st.one_of(st.none(), st.sampled_from(["application/msgpack", "application/json", ""]), st.text(max_size=20)),
)
def test_arbitrary_bytes_and_content_types_decode_or_are_rejected(body: bytes, content_type: str | None) -> None:
    decode_or_reject(body, content_type)
