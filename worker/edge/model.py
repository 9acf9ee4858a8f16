"""The edge's data, transport-neutral: jobs, results, features, status spellings, sizes, submissions."""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

log = structlog.get_logger("worker.edge")

TERMINAL_STATUSES = frozenset({"COMPLETE", "CANCELED", "FAILED", "TIMEOUT", "ERROR"})
_STATUS_SPELLINGS = {"COMPLETED": "COMPLETE", "CANCELLED": "CANCELED", "TIMEDOUT": "TIMEOUT"}
_KNOWN_PENDING = frozenset({"SUBMITTED", "QUEUED", "IN_PROGRESS", "FETCHING", "OPEN", "UNKNOWN", ""})
_seen_unknown_statuses: set[str] = set()
_UPPER = re.compile(r"([A-Z])")
DEFAULT_CHUNK_BYTES = 1 << 20  # the SDK's fallback when the edge does not say


def normalize_status(raw: Any) -> str:
    """Map every spelling the edge and the cloud platform use onto the contract's status names."""
    status = str(raw or "").strip().upper()
    status = _STATUS_SPELLINGS.get(status, status)
    if status not in TERMINAL_STATUSES and status not in _KNOWN_PENDING and status not in _seen_unknown_statuses:
        _seen_unknown_statuses.add(status)
        log.warning("edge_status_unknown", edge_status=status, treated_as="pending")
    return status


def parse_size(text: Any) -> int | None:
    """Read a human size like "1M", "512Ki" or "4MB"; where the reading is ambiguous take the smaller one."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return int(text) if text > 0 else None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)(B?)\s*", str(text or ""), re.IGNORECASE)
    if not match:
        return None
    number, prefix, binary, _ = match.groups()
    if not prefix:
        return int(float(number)) or None
    power = "KMGT".index(prefix.upper()) + 1
    readings = [float(number) * 1024**power]
    if not binary:
        readings.append(float(number) * 1000**power)
    return int(min(readings)) or None


def pick(data: Mapping[str, Any], camel: str, default: Any = None) -> Any:
    """A field in lowerCamelCase or snake_case, whichever the answer used."""
    if camel in data:
        return data[camel]
    return data.get(_snake_case(camel), default)


@functools.lru_cache(maxsize=256)
def _snake_case(camel: str) -> str:
    """The snake_case of a lowerCamelCase name (jobIdentifier: job_identifier); cached, the names are few."""
    return _UPPER.sub(lambda m: "_" + m.group(1).lower(), camel)


def as_int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


@dataclass(slots=True)
class EdgeJob:
    """The edge's view of one job (JobDetails or JobSubmissionReceipt), normalized."""

    job_identifier: str
    status: str
    model: dict[str, Any] = field(default_factory=dict)
    explain: bool = False
    total: int = 0
    pending: int = 0
    completed: int = 0
    failed: int = 0
    job_inputs: list[str] = field(default_factory=list)
    created_at: str | None = None
    updated_at: str | None = None
    submitted_at: str | None = None
    elapsed_ms: int = 0
    # This job's submission was retried after an earlier attempt may have reached the edge unanswered.
    maybe_duplicated: bool = False

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_answer(cls, data: Mapping[str, Any], *, fallback_id: str = "") -> EdgeJob:
        """From the JSON of a receipt or JobDetails (either case), or the same shape made from a protobuf."""
        details = pick(data, "details") or {}
        if not isinstance(details, Mapping):
            details = {}

        def either(key: str) -> Any:
            value = pick(data, key)
            return value if value not in (None, "") else pick(details, key)

        inputs_raw = pick(data, "jobInputs") or []
        job_inputs: list[str] = []
        if isinstance(inputs_raw, Mapping):  # the receipt: {"identifier": [names]}
            names = pick(inputs_raw, "identifier") or []
            job_inputs = [str(n) for n in names] if isinstance(names, list) else []
        elif isinstance(inputs_raw, list):  # JobDetails: [{"identifier": name}]
            for item in inputs_raw:
                name = pick(item, "identifier") if isinstance(item, Mapping) else item
                if name is not None:
                    job_inputs.append(str(name))
        model = pick(data, "model") or {}
        if not isinstance(model, Mapping):
            model = {}
        return cls(
            job_identifier=str(pick(data, "jobIdentifier") or fallback_id),
            status=normalize_status(pick(data, "status")),
            model={
                "identifier": pick(model, "identifier"),
                "version": pick(model, "version"),
                "name": pick(model, "name") or None,
            },
            explain=bool(pick(data, "explain", False)),
            total=as_int(either("total") or pick(data, "totalInputs")),
            pending=as_int(either("pending")),
            completed=as_int(either("completed")),
            failed=as_int(either("failed")),
            job_inputs=job_inputs,
            created_at=either("createdAt") or None,
            updated_at=either("updatedAt") or None,
            submitted_at=either("submittedAt") or None,
            elapsed_ms=as_int(either("elapsedTime")),
        )


@dataclass(slots=True)
class EdgeResults:
    """The edge's Results: each source's results.json object and each failed source's error."""

    finished: bool
    results: dict[str, Any]
    failures: dict[str, Any]
    elapsed_ms: int = 0
    total: int = 0
    completed: int = 0
    failed: int = 0

    def job_status(self) -> str | None:
        """The job's terminal status as these results show it, or None when they cannot tell.

        Finished with every input accounted for: FAILED when all failed, else COMPLETE. Finished with inputs
        missing (cancelled part-way, or an edge that counts differently) needs the job's own status.
        """
        if not self.finished or self.total <= 0 or self.completed + self.failed < self.total:
            return None
        return "FAILED" if self.failed >= self.total else "COMPLETE"

    @classmethod
    def from_answer(cls, data: Mapping[str, Any]) -> EdgeResults:
        """From the JSON of Results (either case), or the same shape made from a protobuf."""
        results: dict[str, Any] = {}
        raw_results = pick(data, "results") or {}
        if isinstance(raw_results, Mapping):
            for source, item in raw_results.items():
                if isinstance(item, Mapping):
                    output = item.get("results.json")
                    results[source] = output if output is not None else {k: v for k, v in item.items()}
        failures_raw = pick(data, "failures") or {}
        failures = (
            {source: _failure(value) for source, value in failures_raw.items()}
            if isinstance(failures_raw, Mapping)
            else {}
        )
        return cls(
            finished=bool(pick(data, "finished", False)),
            results=results,
            failures=failures,
            elapsed_ms=as_int(pick(data, "elapsedTime")),
            total=as_int(pick(data, "total")),
            completed=as_int(pick(data, "completed")),
            failed=as_int(pick(data, "failed")),
        )


def _failure(value: Any) -> Any:
    """A failure's Any as one flat object: protobuf JSON nests a well-known type (a Struct) under "value"."""
    if not isinstance(value, Mapping):
        return value
    inner = value.get("value")
    if str(value.get("@type", "")).endswith("/google.protobuf.Struct") and isinstance(inner, Mapping):
        return {"@type": value["@type"], **inner}
    return dict(value)


@dataclass(frozen=True, slots=True)
class Features:
    """The edge's chunking limits (JobFeatures)."""

    chunk_bytes: int
    max_chunks: int | None
    max_inputs: int | None

    @classmethod
    def from_answer(cls, data: Any) -> Features:
        data = data if isinstance(data, Mapping) else {}
        return cls(
            chunk_bytes=parse_size(pick(data, "inputChunkMaximumSize")) or DEFAULT_CHUNK_BYTES,
            max_chunks=as_int(pick(data, "maximumInputChunks")) or None,
            max_inputs=as_int(pick(data, "maximumInputsPerJob")) or None,
        )


@dataclass(frozen=True, slots=True)
class JobSummary:
    """One line of the edge's job list (GetJobs, GET /api/jobs)."""

    job_identifier: str
    status: str
    model: dict[str, Any]

    @classmethod
    def from_answer(cls, data: Mapping[str, Any]) -> JobSummary:
        model = pick(data, "model") or {}
        model = model if isinstance(model, Mapping) else {}
        return cls(
            job_identifier=str(pick(data, "jobIdentifier") or ""),
            status=normalize_status(pick(data, "status")),
            model={"identifier": pick(model, "identifier"), "version": pick(model, "version")},
        )


@dataclass(frozen=True, slots=True)
class Submission:
    """One JobSubmission: a text or embedded job (input_type and sources set), or an open job (neither).

    It holds the request's own values, not copies: each transport converts them when it builds its message
    (text as plain strings, embedded as data URIs, the same for JSON and for Struct values), so the
    converted copy lives no longer than that message's serialization.
    """

    model_id: str
    version: str
    explain: bool
    input_type: str | None = None
    sources: Mapping[str, Mapping[str, bytes | str]] | None = None

    def wire_sources(self) -> Iterator[tuple[str, dict[str, str]]]:
        """Each source's inputs as the edge takes them, one source at a time."""
        for source, inputs in (self.sources or {}).items():
            if self.input_type == "text":
                yield source, {k: v if isinstance(v, str) else bytes(v).decode("utf-8") for k, v in inputs.items()}
            else:
                yield source, {k: data_uri(v) for k, v in inputs.items()}

    def as_json(self) -> dict[str, Any]:
        model = {"identifier": self.model_id, "version": self.version}
        body: dict[str, Any] = {"model": model, "explain": self.explain}
        if self.input_type is not None:
            body["input"] = {"type": self.input_type, "sources": dict(self.wire_sources())}
        return body


def data_uri(value: bytes | str) -> str:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return "data:application/octet-stream;base64," + base64.b64encode(raw).decode("ascii")


def as_bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def chunks(raw: bytes, size: int) -> Iterator[memoryview]:
    """The input in pieces of at most `size` bytes; an empty input is one empty chunk."""
    view = memoryview(raw)
    if not raw:
        yield view
        return
    for start in range(0, len(raw), size):
        yield view[start : start + size]
