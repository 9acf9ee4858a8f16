"""The edge server's HTTP/JSON API: submit, follow, fetch results, cancel. Knows nothing of RabbitMQ."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
import structlog
import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.exceptions import SSLError as Urllib3SSLError

from worker.backoff import backoff_delay
from worker.errors import EdgeError, EdgeRejected, EdgeUnavailable, JobNotFound, ModelNotFound

log = structlog.get_logger("worker.edge")

TERMINAL_STATUSES = frozenset({"COMPLETE", "CANCELED", "FAILED", "TIMEOUT", "ERROR"})
_STATUS_SPELLINGS = {"COMPLETED": "COMPLETE", "CANCELLED": "CANCELED", "TIMEDOUT": "TIMEOUT"}
_KNOWN_PENDING = frozenset({"SUBMITTED", "QUEUED", "IN_PROGRESS", "FETCHING", "OPEN", "UNKNOWN", ""})
_seen_unknown_statuses: set[str] = set()
_DEFAULT_CHUNK_BYTES = 1 << 20  # the SDK's fallback when the edge does not say


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


def _get(data: Mapping[str, Any], camel: str, default: Any = None) -> Any:
    """A field in lowerCamelCase or snake_case, whichever the answer used."""
    if camel in data:
        return data[camel]
    snake = re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), camel)
    return data.get(snake, default)


def _int(value: Any) -> int:
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
        details = _get(data, "details") or {}
        if not isinstance(details, Mapping):
            details = {}

        def pick(key: str) -> Any:
            value = _get(data, key)
            return value if value not in (None, "") else _get(details, key)

        inputs_raw = _get(data, "jobInputs") or []
        job_inputs: list[str] = []
        if isinstance(inputs_raw, Mapping):  # the receipt: {"identifier": [names]}
            names = _get(inputs_raw, "identifier") or []
            job_inputs = [str(n) for n in names] if isinstance(names, list) else []
        elif isinstance(inputs_raw, list):  # JobDetails: [{"identifier": name}]
            for item in inputs_raw:
                name = _get(item, "identifier") if isinstance(item, Mapping) else item
                if name is not None:
                    job_inputs.append(str(name))
        model = _get(data, "model") or {}
        if not isinstance(model, Mapping):
            model = {}
        return cls(
            job_identifier=str(_get(data, "jobIdentifier") or fallback_id),
            status=normalize_status(_get(data, "status")),
            model={
                "identifier": _get(model, "identifier"),
                "version": _get(model, "version"),
                "name": _get(model, "name") or None,
            },
            explain=bool(_get(data, "explain", False)),
            total=_int(pick("total") or _get(data, "totalInputs")),
            pending=_int(pick("pending")),
            completed=_int(pick("completed")),
            failed=_int(pick("failed")),
            job_inputs=job_inputs,
            created_at=pick("createdAt") or None,
            updated_at=pick("updatedAt") or None,
            submitted_at=pick("submittedAt") or None,
            elapsed_ms=_int(pick("elapsedTime")),
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
        results: dict[str, Any] = {}
        raw_results = _get(data, "results") or {}
        if isinstance(raw_results, Mapping):
            for source, item in raw_results.items():
                if isinstance(item, Mapping):
                    output = item.get("results.json")
                    results[source] = output if output is not None else {k: v for k, v in item.items()}
        failures_raw = _get(data, "failures") or {}
        failures = dict(failures_raw) if isinstance(failures_raw, Mapping) else {}
        return cls(
            finished=bool(_get(data, "finished", False)),
            results=results,
            failures=failures,
            elapsed_ms=_int(_get(data, "elapsedTime")),
            total=_int(_get(data, "total")),
            completed=_int(_get(data, "completed")),
            failed=_int(_get(data, "failed")),
        )


class EdgeHTTPError(EdgeError):
    """A non-2xx answer, with the status and the message parsed from either error shape."""

    def __init__(self, status: int, message: str, grpc_code: int | None = None) -> None:
        super().__init__(f"edge answered HTTP {status}: {message}")
        self.status = status
        self.grpc_code = grpc_code
        self.edge_message = message

    @property
    def transient(self) -> bool:
        return (self.status == 429 and not self.too_large) or (self.status >= 500 and self.status != 501)

    @property
    def too_large(self) -> bool:
        return (self.status in (413, 429) and "larger than max" in self.edge_message.lower()) or self.status == 413


def _error_message(response: urllib3.BaseHTTPResponse) -> tuple[str, int | None]:
    try:
        body = json.loads(response.data)
    except ValueError:
        body = None
    if isinstance(body, Mapping):
        message = body.get("message") or body.get("error")
        code = body.get("code")
        if message:
            return str(message)[:500], code if isinstance(code, int) else None
    return f"{response.status} {response.reason or ''}".strip(), None


@dataclass(frozen=True, slots=True)
class Features:
    chunk_bytes: int
    max_chunks: int | None
    max_inputs: int | None


class EdgeClient:
    """A thread-safe client for one edge server: one connection per thread, explicit timeouts, retries."""

    def __init__(
        self,
        *,
        base_url: str,
        request_timeout_s: float,
        max_attempts: int,
        api_key: str = "",
        chunk_encoding: str = "json",
        on_call: Callable[[str, float, str | None], None] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._base_path = urllib.parse.urlsplit(self.base_url).path
        self._read_timeout_s = request_timeout_s
        self._timeout = urllib3.Timeout(connect=min(5.0, request_timeout_s), read=request_timeout_s)
        self._max_attempts = max_attempts
        self._headers = {"Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"ApiKey {api_key}"
        self._chunk_encoding = chunk_encoding
        self._local = threading.local()
        self._features: Features | None = None
        self._features_lock = threading.Lock()
        self._on_call = on_call

    # -- plumbing ------------------------------------------------------------------------------------

    def _pool(self) -> urllib3.HTTPConnectionPool:
        """This thread's connection pool to the edge, made and configured (TLS included) by requests.

        Calls go to the pool of requests' HTTPAdapter directly rather than through Session.send: on a local
        edge, requests' per-call layers (environment, cookies, hooks, Response building) cost more than the
        HTTP exchange itself (bench/results/profile.md). The pool is the one requests would use.
        """
        pool: urllib3.HTTPConnectionPool | None = getattr(self._local, "pool", None)
        if pool is None:
            adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0)
            probe = requests.PreparedRequest()
            probe.prepare(method="GET", url=self.base_url + "/")
            made = adapter.get_connection_with_tls_context(probe, verify=True)
            # What HTTPAdapter.send does next: for https, trust requests' CA bundle (certifi), not the
            # system's store, so the pool verifies exactly as requests would.
            adapter.cert_verify(made, probe.url, True, None)  # type: ignore[no-untyped-call]
            assert isinstance(made, urllib3.HTTPConnectionPool)
            pool = made
            self._local.pool = pool
            self._local.adapter = adapter  # owns the pool: kept alive with it
        return pool

    def _request_once(
        self, method: str, path: str, name: str, *, data: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Any:
        started = time.monotonic()
        self._local.sent_at = started
        error_kind: str | None = None
        try:
            response = self._pool().urlopen(
                method,
                self._base_path + path,
                body=data,
                headers={**self._headers, **headers} if headers else self._headers,
                retries=False,
                redirect=False,
                assert_same_host=False,
                timeout=self._timeout,
            )
        except NewConnectionError as exc:
            error_kind = "connection"
            raise EdgeUnavailable(f"edge at {self.base_url} unreachable: {_reason(exc)}") from None
        except ConnectTimeoutError:
            error_kind = "timeout"
            raise EdgeUnavailable(f"edge at {self.base_url} unreachable: connect timeout") from None
        except Urllib3SSLError as exc:
            error_kind = "connection"
            raise EdgeUnavailable(f"edge at {self.base_url} unreachable: TLS failed: {_reason(exc)}") from None
        except ReadTimeoutError:
            error_kind = "timeout"
            raise _maybe_sent(
                f"edge at {self.base_url} did not answer {name} within {self._read_timeout_s:g} s"
            ) from None
        except ProtocolError:
            # The request went out (at least in part) and no HTTP answer came back.
            error_kind = "connection"
            raise _maybe_sent(
                f"edge at {self.base_url} closed the connection without an HTTP answer to {name}: a gRPC-only "
                "port does this (edge.url must point at the HTTP gateway), and so does an edge restarting"
            ) from None
        except (HTTPError, OSError) as exc:
            error_kind = "request"
            raise EdgeUnavailable(f"edge call {name} failed: {type(exc).__name__}") from None
        finally:
            if error_kind is not None and self._on_call is not None:
                self._on_call(name, time.monotonic() - started, error_kind)
        if self._on_call is not None:
            kind = None if response.status < 400 else f"http_{response.status // 100}xx"
            self._on_call(name, time.monotonic() - started, kind)
        if response.status >= 300:
            message, grpc_code = _error_message(response)
            raise EdgeHTTPError(response.status, message, grpc_code)
        content = response.data
        if not content:
            return {}
        try:
            return json.loads(content)
        except ValueError:
            raise EdgeUnavailable(f"edge answered {name} with something that is not JSON") from None

    def last_sent_at(self) -> float | None:
        """When this thread's last request started (time.monotonic()), whatever its outcome."""
        sent: float | None = getattr(self._local, "sent_at", None)
        return sent

    def _call(
        self,
        method: str,
        path: str,
        name: str,
        *,
        deadline: float | None = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        idempotent: bool = True,
    ) -> Any:
        """One API call, retried on transient failures with capped exponential backoff and jitter.

        A non-idempotent call (a chunk, a close) that may have reached the edge is not repeated: the caller
        starts its upload again. A submission is repeated, and the receipt says so (maybe_duplicated), or
        the final EdgeUnavailable does (maybe_sent): the edge has no idempotency key, so a job it accepted
        without our hearing of it cannot be found again (README, "Idempotency").
        """
        attempt = 0
        sent_unanswered = False
        while True:
            attempt += 1
            try:
                answer = self._request_once(method, path, name, data=data, headers=headers)
                if sent_unanswered:
                    self._local.maybe_duplicated = True
                return answer
            except EdgeHTTPError as exc:
                if not exc.transient or attempt >= self._max_attempts:
                    if exc.transient:
                        raise EdgeUnavailable(f"{exc} (after {attempt} attempts)") from None
                    raise
                failure: EdgeError = exc
            except EdgeUnavailable as exc:
                if exc.maybe_sent and not idempotent:
                    if name != "submit":
                        raise
                    sent_unanswered = True  # the caller logs it with the job's context
                if attempt >= self._max_attempts:
                    final = EdgeUnavailable(f"{exc} (after {attempt} attempts)")
                    final.maybe_sent = sent_unanswered
                    raise final from None
                failure = exc
            delay = backoff_delay(attempt)
            if deadline is not None and time.monotonic() + delay > deadline:
                final = EdgeUnavailable(f"{failure} (deadline reached after {attempt} attempts)")
                final.maybe_sent = sent_unanswered
                raise final
            log.debug("edge_call_retry", call=name, attempt=attempt, delay_s=round(delay, 3), error=str(failure))
            time.sleep(delay)

    # -- the API ---------------------------------------------------------------------------------------

    def features(self) -> Features:
        """The edge's chunking limits (cached after the first successful read)."""
        if self._features is not None:
            return self._features
        with self._features_lock:
            if self._features is None:
                data = self._call("GET", "/api/jobs/features", "features")
                data = data if isinstance(data, Mapping) else {}
                chunk = parse_size(_get(data, "inputChunkMaximumSize")) or _DEFAULT_CHUNK_BYTES
                self._features = Features(
                    chunk_bytes=chunk,
                    max_chunks=_int(_get(data, "maximumInputChunks")) or None,
                    max_inputs=_int(_get(data, "maximumInputsPerJob")) or None,
                )
            return self._features

    def answers(self) -> tuple[bool, str]:
        """One unretried probe of GET /api/jobs/features: (whether the edge answers, why not)."""
        try:
            self._request_once("GET", "/api/jobs/features", "features")
        except EdgeHTTPError as exc:
            if exc.transient:
                return False, str(exc)
            return True, ""  # it answers, even if it has no such endpoint
        except EdgeUnavailable as exc:
            return False, exc.message
        return True, ""

    def submit_job(
        self,
        *,
        model_id: str,
        version: str,
        sources: Mapping[str, Mapping[str, bytes | str]],
        input_type: str,
        explain: bool,
        deadline: float | None = None,
    ) -> EdgeJob:
        """Submit a text or embedded job in one call; raises ModelNotFound, EdgeRejected or EdgeHTTPError."""
        if input_type == "text":
            wire_sources: dict[str, dict[str, str]] = {
                s: {k: v if isinstance(v, str) else v.decode("utf-8") for k, v in inputs.items()}
                for s, inputs in sources.items()
            }
        else:
            wire_sources = {s: {k: _data_uri(v) for k, v in inputs.items()} for s, inputs in sources.items()}
        body = {
            "model": {"identifier": model_id, "version": version},
            "explain": explain,
            "input": {"type": input_type, "sources": wire_sources},
        }
        payload = json.dumps(body, separators=(",", ":")).encode()
        del wire_sources, body
        return self._submit(payload, model_id, version, deadline)

    def _submit(self, payload: bytes, model_id: str, version: str, deadline: float | None) -> EdgeJob:
        self._local.maybe_duplicated = False
        try:
            data = self._call(
                "POST",
                "/api/jobs",
                "submit",
                data=payload,
                headers={"Content-Type": "application/json"},
                deadline=deadline,
                idempotent=False,
            )
        except EdgeHTTPError as exc:
            raise _submit_error(exc, model_id, version) from None
        job = EdgeJob.from_answer(data)
        job.maybe_duplicated = bool(getattr(self._local, "maybe_duplicated", False))
        return job

    def submit_chunked(
        self,
        *,
        model_id: str,
        version: str,
        sources: Mapping[str, Mapping[str, bytes | str]],
        explain: bool,
        deadline: float | None = None,
    ) -> EdgeJob:
        """Open a job, append every input in chunks no larger than the edge allows, then close it."""
        chunk_bytes = self.features().chunk_bytes
        payload = json.dumps({"model": {"identifier": model_id, "version": version}, "explain": explain}).encode()
        opened = self._submit(payload, model_id, version, deadline)
        job_id = opened.job_identifier
        if not job_id:
            raise EdgeRejected("edge opened a job without a jobIdentifier")
        try:
            for source, inputs in sources.items():
                for key, value in inputs.items():
                    raw = value.encode("utf-8") if isinstance(value, str) else value
                    path = f"/api/jobs/{_q(job_id)}/{_q(source)}/{_q(key)}"
                    for chunk in _chunks(raw, chunk_bytes):
                        self._append_chunk(path, chunk, deadline)
            data = self._call("POST", f"/api/jobs/{_q(job_id)}/close", "close", deadline=deadline, idempotent=False)
        except EdgeHTTPError as exc:
            self._abandon(job_id)
            if exc.status == 501:
                failure: EdgeError = EdgeRejected("edge does not support open jobs (chunked upload): HTTP 501")
            else:
                failure = _submit_error(exc, model_id, version)
            failure.job_identifier = job_id  # the open job existed (and was cancelled): its reply names it
            raise failure from None
        except EdgeError as exc:
            self._abandon(job_id)
            exc.job_identifier = job_id
            raise
        closed = EdgeJob.from_answer(data, fallback_id=job_id)
        closed.maybe_duplicated = opened.maybe_duplicated
        return closed

    def _append_chunk(self, path: str, chunk: memoryview, deadline: float | None) -> None:
        if self._chunk_encoding == "multipart":
            boundary = uuid.uuid4().hex
            head = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="input"; filename="input"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            body = b"".join((head, chunk, f"\r\n--{boundary}--\r\n".encode()))
            content_type = f"multipart/form-data; boundary={boundary}"
        else:
            body = b'"' + base64.b64encode(chunk) + b'"'
            content_type = "application/json"
        self._call(
            "POST",
            path,
            "chunk",
            data=body,
            headers={"Content-Type": content_type},
            deadline=deadline,
            idempotent=False,
        )

    def _abandon(self, job_id: str) -> None:
        try:
            self._request_once("DELETE", f"/api/jobs/{_q(job_id)}", "cancel")
        except EdgeError:
            log.warning("edge_open_job_abandoned", job_identifier=job_id)

    def get_job(self, job_id: str, *, deadline: float | None = None) -> EdgeJob:
        try:
            data = self._call("GET", f"/api/jobs/{_q(job_id)}", "status", deadline=deadline)
        except EdgeHTTPError as exc:
            if exc.status == 404:
                raise JobNotFound(f"edge does not know job {job_id}: {exc.edge_message}") from None
            raise
        return EdgeJob.from_answer(data, fallback_id=job_id)

    def get_results(self, job_id: str, *, deadline: float | None = None) -> EdgeResults | None:
        """The job's Results, or None while the edge says they are not ready (404 on the cloud platform)."""
        try:
            data = self._call("GET", f"/api/results/{_q(job_id)}", "results", deadline=deadline)
        except EdgeHTTPError as exc:
            if exc.status == 404:
                return None
            raise
        return EdgeResults.from_answer(data)

    def list_jobs(
        self, *, model_id: str, start: str | None = None, end: str | None = None, deadline: float | None = None
    ) -> list[EdgeJob]:
        """The jobs the edge knows of one model, created between start and end (RFC 3339; None: unbounded).

        GET /api/jobs answers JobSummary entries (jobIdentifier, status, model): get_job gives the rest.
        """
        query = {"model": model_id}
        if start is not None:
            query["start_date"] = start
        if end is not None:
            query["end_date"] = end
        data = self._call("GET", "/api/jobs?" + urllib.parse.urlencode(query), "list", deadline=deadline)
        if isinstance(data, Mapping):  # a gateway that wraps the list (JobSummaryList's "jobs")
            data = _get(data, "jobs") or []
        if not isinstance(data, list):
            return []
        return [EdgeJob.from_answer(item) for item in data if isinstance(item, Mapping)]

    def cancel_job(self, job_id: str) -> EdgeJob | None:
        """Cancel a job; None when the edge no longer knows it."""
        try:
            data = self._call("DELETE", f"/api/jobs/{_q(job_id)}", "cancel")
        except EdgeHTTPError as exc:
            if exc.status == 404:
                return None
            raise
        return EdgeJob.from_answer(data, fallback_id=job_id)


def _reason(error: BaseException) -> str:
    """The innermost cause of a connection failure, short (e.g. "[Errno 111] Connection refused")."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    text = str(error)
    # urllib3 prefixes its own wrapper text ("<HTTPConnection ...>: Failed to establish a new connection: ").
    return text.rsplit(": ", 1)[-1] if "Failed to establish" in text else text


def _maybe_sent(message: str) -> EdgeUnavailable:
    error = EdgeUnavailable(message)
    error.maybe_sent = True
    return error


def _submit_error(exc: EdgeHTTPError, model_id: str, version: str) -> EdgeError:
    if exc.status == 404:
        return ModelNotFound(f"model {model_id}:{version} not found on the edge: {exc.edge_message}")
    if exc.too_large:
        return EdgeRejected(f"edge refused the job as too large: {exc.edge_message}", code="PAYLOAD_TOO_LARGE")
    return EdgeRejected(f"edge refused the job (HTTP {exc.status}): {exc.edge_message}")


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def _data_uri(value: bytes | str) -> str:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return "data:application/octet-stream;base64," + base64.b64encode(raw).decode("ascii")


def _chunks(raw: bytes, size: int) -> Iterator[memoryview]:
    view = memoryview(raw)
    if not raw:
        yield view
        return
    for start in range(0, len(raw), size):
        yield view[start : start + size]
