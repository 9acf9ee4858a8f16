"""Reading requests in their proto3 JSON form: a JobSubmission (from an HTTP body, or a gRPC message turned
into its JSON mapping) and the JobFilter of a job listing."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from worker.emulator.errors import NOT_FOUND, EdgeError, invalid
from worker.emulator.job import InputDigest, Submission

MAXIMUM_INPUT_CHUNKS = 1000
MAXIMUM_INPUTS_PER_JOB = 1000


def camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def field(document: dict[str, Any], snake_name: str) -> Any:
    """A request field by its snake_case name or its lowerCamelCase JSON name."""
    if snake_name in document:
        return document[snake_name]
    return document.get(camel(snake_name))


def optional_number(document: dict[str, Any], snake_name: str) -> float | None:
    value = field(document, snake_name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(f"{snake_name} must be a number")
    return float(value)


def parse_json_object(body: bytes, *, allow_empty: bool = False) -> dict[str, Any]:
    if not body.strip():
        if allow_empty:
            return {}
        raise invalid("request body is empty")
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise invalid(f"request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise invalid("request body must be a JSON object")
    return document


def parse_submission(document: dict[str, Any], models: frozenset[tuple[str, str]]) -> Submission:
    """A JobSubmission; without `input` it opens a job. Inputs are hashed here, outside any lock."""
    model = field(document, "model")
    if not isinstance(model, dict):
        raise invalid("model must be an object with identifier and version")
    identifier = field(model, "identifier")
    version = field(model, "version")
    if not (isinstance(identifier, str) and identifier and isinstance(version, str) and version):
        raise invalid("model.identifier and model.version must be non-empty strings")
    explain = field(document, "explain")
    if explain is None:
        explain = False
    if not isinstance(explain, bool):
        raise invalid("explain must be a boolean")
    if (identifier, version) not in models:
        raise EdgeError(NOT_FOUND, f"model {identifier}:{version} not found")
    job_input = field(document, "input")
    if job_input is None:
        return Submission(identifier, version, explain, "open", {})
    if not isinstance(job_input, dict):
        raise invalid("input must be an object with type and sources")
    input_type = field(job_input, "type")
    if input_type not in ("text", "embedded"):
        raise invalid(f"input type {input_type!r} is not supported (use text or embedded)")
    sources = field(job_input, "sources")
    if not isinstance(sources, dict) or not sources:
        raise invalid("input.sources must be a non-empty object")
    if len(sources) > MAXIMUM_INPUTS_PER_JOB:
        raise invalid(f"a job takes at most {MAXIMUM_INPUTS_PER_JOB} inputs, got {len(sources)}")
    inputs: dict[str, dict[str, InputDigest]] = {}
    for source, values in sources.items():
        if not isinstance(values, dict) or not values:
            raise invalid(f"source {source!r} must map model input names to values")
        digests: dict[str, InputDigest] = {}
        for name, value in values.items():
            if not isinstance(value, str):
                raise invalid(f"input {source}/{name} must be a string")
            raw = _encode_text(value, source, name) if input_type == "text" else _decode_data_uri(value)
            digests[name] = InputDigest.of(raw)
        inputs[source] = digests
    return Submission(identifier, version, explain, input_type, inputs)


def _encode_text(value: str, source: str, name: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(f"input {source}/{name} is not valid UTF-8 text") from None


def _decode_data_uri(value: str) -> bytes:
    header, comma, payload = value.partition(",")
    if not (comma and header.startswith("data:") and header.endswith(";base64")):
        raise invalid("an embedded value must be a data URI: data:<mime>;base64,<data>")
    return decode_base64(payload, "the data URI payload")


def decode_base64(text: str, what: str) -> bytes:
    try:
        # validate=True refuses characters outside the standard alphabet and missing padding.
        return base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise invalid(f"{what} is not standard padded base64: {exc}") from None


@dataclass(frozen=True, slots=True)
class JobFilter:
    """jobs.v1.JobFilter: every field a string, empty meaning "any"; dates are RFC 3339."""

    model: str = ""  # a model identifier
    status: str = ""
    start_date: datetime | None = None  # jobs created at or after
    end_date: datetime | None = None  # jobs created at or before

    @classmethod
    def parse(cls, values: dict[str, str]) -> JobFilter:
        """From JobFilter fields by proto or JSON name (query parameters, or a message's JSON mapping)."""
        return cls(
            model=str(field(values, "model") or ""),
            status=str(field(values, "status") or ""),
            start_date=_rfc3339(field(values, "start_date"), "start_date"),
            end_date=_rfc3339(field(values, "end_date"), "end_date"),
        )


def _rfc3339(value: Any, name: str) -> datetime | None:
    if not value:
        return None
    text = str(value)
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise invalid(f"{name} {text!r} is not an RFC 3339 timestamp") from None
    if moment.tzinfo is None:
        raise invalid(f"{name} {text!r} has no time zone (RFC 3339 needs Z or an offset)")
    return moment
