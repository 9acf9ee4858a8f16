"""Chunk bodies as the HTTP face reads them: what a grpc-gateway binds to AppendableJobInput.data.

Measured on stock gateways (edge-http-api.md, "Measured against stock gateways"): a JSON array of byte
values is taken by every generation; a JSON string of standard padded base64 only from v2.10.1 on (an
older one answers 400 "json: cannot unmarshal string into Go value of type []json.RawMessage"); an empty
body or `null` is a zero-length chunk. multipart/form-data with a part named "input" (the cloud
platform's form) is taken by the newer face only, which the worker's `multipart` encoding relies on.
"""

from __future__ import annotations

import json
from email.message import Message
from email.utils import collapse_rfc2231_value
from typing import Any

from worker.emulator.errors import invalid
from worker.emulator.submission import decode_base64

OLD_GATEWAY_STRING_REFUSAL = "json: cannot unmarshal string into Go value of type []json.RawMessage"


def decode_chunk(body: bytes, content_type: str, *, takes_base64: bool) -> bytes:
    """The raw bytes of one chunk body; EdgeError INVALID_ARGUMENT when this gateway refuses it."""
    if content_type.split(";", 1)[0].strip().lower() == "multipart/form-data":
        if not takes_base64:
            raise invalid("invalid character '-' in numeric literal")  # what Go's JSON decoder says of it
        return multipart_part(body, content_type, "input")
    if not body.strip():
        return b""
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise invalid(f"chunk body is not valid JSON: {exc}") from None
    if document is None:
        return b""
    if isinstance(document, str):
        if not takes_base64:
            raise invalid(OLD_GATEWAY_STRING_REFUSAL)
        return decode_base64(document, "the chunk")
    if isinstance(document, list):
        return _byte_values(document)
    raise invalid("chunk body must be a JSON string of base64 or a JSON array of byte values")


def _byte_values(values: list[Any]) -> bytes:
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
            raise invalid(f"chunk byte {index} is {json.dumps(value)}, not a number from 0 to 255")
    return bytes(values)


def _header_param(header_name: str, header_value: str, param: str) -> str | None:
    message = Message()
    message[header_name] = header_value
    value = message.get_param(param, header=header_name)
    if value is None:
        return None
    return collapse_rfc2231_value(value) if isinstance(value, tuple) else value


def multipart_part(body: bytes, content_type: str, wanted: str) -> bytes:
    """The content of the form-data part named `wanted` (RFC 7578), found without copying the others."""
    boundary = _header_param("content-type", content_type, "boundary")
    if not boundary:
        raise invalid("multipart/form-data body without a boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    position = body.find(delimiter)
    if position < 0:
        raise invalid("multipart body does not contain its boundary")
    position += len(delimiter)
    while not body.startswith(b"--", position):
        line_end = body.find(b"\r\n", position)
        if line_end < 0:
            raise invalid("multipart body is truncated")
        headers_start = line_end + 2
        if body.startswith(b"\r\n", headers_start):
            headers, content_start = b"", headers_start + 2
        else:
            headers_end = body.find(b"\r\n\r\n", headers_start)
            if headers_end < 0:
                raise invalid("multipart part headers are truncated")
            headers, content_start = body[headers_start:headers_end], headers_end + 4
        content_end = body.find(b"\r\n" + delimiter, content_start)
        if content_end < 0:
            raise invalid("multipart part is not terminated by the boundary")
        if _part_name(headers) == wanted:
            return body[content_start:content_end]
        position = content_end + 2 + len(delimiter)
    raise invalid(f"multipart body has no part named {wanted!r}")


def _part_name(headers: bytes) -> str | None:
    for line in headers.decode("latin-1").split("\r\n"):
        name, colon, value = line.partition(":")
        if colon and name.strip().lower() == "content-disposition":
            return _header_param("content-disposition", value.strip(), "name")
    return None
