"""The edge's HTTP/JSON gateway (edge-http-api.md), both generations of grpc-gateway: one connection per
thread, explicit timeouts, retries, and a chunk body form learned from the edge itself."""

from __future__ import annotations

import base64
import json
import re
import threading
import urllib.parse
import uuid
from collections.abc import Mapping
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

from worker.edge.base import EdgeAnswerError, OnCall, RetryingEdgeClient, maybe_sent
from worker.edge.model import EdgeJob, EdgeResults, Features, JobSummary, Submission
from worker.errors import EdgeUnavailable

log = structlog.get_logger("worker.edge")

CHUNK_ENCODINGS = ("auto", "json", "bytes-array", "multipart")
# How a grpc-gateway older than v2.10.1 refuses a chunk sent as a base64 string: it binds a bytes field
# through []json.RawMessage (edge-http-api.md, "Measured against stock gateways").
_OLD_GATEWAY_REFUSAL = re.compile(r"cannot\s+unmarshal\s+string\s+into\b.*\[\]\s*(?:json\.)?RawMessage", re.I | re.S)
_BYTE_TEXT = [str(i).encode() for i in range(256)]


class EdgeHTTPError(EdgeAnswerError):
    """A non-2xx answer, with the status and the message parsed from either error shape."""

    def __init__(self, status: int, message: str, grpc_code: int | None = None) -> None:
        too_large = status == 413 or (status == 429 and "larger than max" in message.lower())
        super().__init__(
            f"HTTP {status}",
            message,
            transient=(status == 429 and not too_large) or (status >= 500 and status != 501),
            too_large=too_large,
            not_found=status == 404,
            unsupported=status == 501,
        )
        self.status = status
        self.grpc_code = grpc_code


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


class HttpEdgeClient(RetryingEdgeClient):
    """A thread-safe client for one edge's HTTP/JSON gateway: one connection per thread."""

    def __init__(
        self,
        *,
        base_url: str,
        request_timeout_s: float,
        max_attempts: int,
        api_key: str = "",
        chunk_encoding: str = "auto",
        on_call: OnCall | None = None,
    ) -> None:
        if chunk_encoding not in CHUNK_ENCODINGS:
            raise ValueError(f"chunk_encoding: expected one of {', '.join(CHUNK_ENCODINGS)}, got {chunk_encoding!r}")
        super().__init__(target=base_url.rstrip("/"), max_attempts=max_attempts, on_call=on_call)
        self.base_url = self.target
        split = urllib.parse.urlsplit(self.base_url)
        self._base_path = split.path
        self._grpc_hint = f"grpc://{split.netloc}"
        self._read_timeout_s = request_timeout_s
        self._timeout = urllib3.Timeout(connect=min(5.0, request_timeout_s), read=request_timeout_s)
        self._headers = {"Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"ApiKey {api_key}"
        self.chunk_encoding = chunk_encoding
        # "auto" sends base64 strings until the edge shows it is an older gateway; then byte arrays.
        self._chunk_form = "json" if chunk_encoding == "auto" else chunk_encoding
        self._string_chunk_taken = False  # a base64 string chunk was once accepted: a newer gateway
        self._form_lock = threading.Lock()

    @property
    def chunk_form(self) -> str:
        """The body form chunks go in now: "json", "bytes-array" or "multipart"."""
        return self._chunk_form

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
        self, method: str, path: str, name: str, *, data: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> Any:
        started = self._mark_sent()
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
            raise maybe_sent(
                f"edge at {self.base_url} did not answer {name} within {self._read_timeout_s:g} s"
            ) from None
        except ProtocolError:
            # The request went out (at least in part) and no HTTP answer came back.
            error_kind = "connection"
            raise maybe_sent(
                f"edge at {self.base_url} closed the connection without an HTTP answer to {name}: a gRPC-only "
                f"port does this (edge.url must point at the HTTP gateway, or say edge.url = "
                f'"{self._grpc_hint}" to speak gRPC to it), and so does an edge restarting'
            ) from None
        except (HTTPError, OSError) as exc:
            error_kind = "request"
            raise EdgeUnavailable(f"edge call {name} failed: {type(exc).__name__}") from None
        finally:
            if error_kind is not None:
                self._report(name, started, error_kind)
        self._report(name, started, None if response.status < 400 else f"http_{response.status // 100}xx")
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

    def _exchange(
        self,
        method: str,
        path: str,
        name: str,
        meta: Mapping[str, str],
        *,
        deadline: float | None = None,
        data: bytes | None = None,
        content_type: str | None = None,
        idempotent: bool = True,
    ) -> Any:
        headers = dict(meta)
        if content_type is not None:
            headers["Content-Type"] = content_type
        return self._call(
            lambda: self._request_once(method, path, name, data=data, headers=headers),
            name,
            deadline=deadline,
            idempotent=idempotent,
        )

    # -- the transport's primitives -----------------------------------------------------------------------

    def _probe_once(self) -> None:
        self._request_once("GET", "/api/jobs/features", "features")

    def _do_features(self) -> Features:
        return Features.from_answer(self._exchange("GET", "/api/jobs/features", "features", {}))

    def _do_submit(self, submission: Submission, deadline: float | None, meta: Mapping[str, str]) -> EdgeJob:
        payload = json.dumps(submission.as_json(), separators=(",", ":")).encode()
        data = self._exchange(
            "POST",
            "/api/jobs",
            "submit",
            meta,
            data=payload,
            content_type="application/json",
            deadline=deadline,
            idempotent=False,
        )
        return EdgeJob.from_answer(_mapping(data))

    def _do_append(
        self, job_id: str, source: str, key: str, chunk: memoryview, *, deadline: float | None, meta: Mapping[str, str]
    ) -> None:
        path = f"/api/jobs/{_q(job_id)}/{_q(source)}/{_q(key)}"
        form = self._chunk_form
        try:
            self._send_chunk(path, chunk, form, deadline, meta)
        except EdgeHTTPError as exc:
            if form != "json" or self.chunk_encoding != "auto" or not self._refused_as_older_gateway(exc):
                raise
            # A refused chunk was not appended: the same chunk goes again, as a byte array.
            self._send_chunk(path, chunk, "bytes-array", deadline, meta)
            self._learn_bytes_array(exc)
            return
        if form == "json":
            self._string_chunk_taken = True

    def _refused_as_older_gateway(self, exc: EdgeHTTPError) -> bool:
        """The older gateway's words; or, before any string chunk was taken, its code on the first one."""
        if exc.status != 400:
            return False
        if _OLD_GATEWAY_REFUSAL.search(exc.edge_message):
            return True
        return exc.grpc_code == 3 and not self._string_chunk_taken

    def _learn_bytes_array(self, exc: EdgeHTTPError) -> None:
        with self._form_lock:
            if self._chunk_form == "bytes-array":
                return
            self._chunk_form = "bytes-array"
        log.info(
            "edge_chunk_encoding_learned",
            url=self.base_url,
            chunk_encoding="bytes-array",
            refused="json",
            edge_message=exc.edge_message[:200],
        )

    def _send_chunk(
        self, path: str, chunk: memoryview, form: str, deadline: float | None, meta: Mapping[str, str]
    ) -> None:
        if form == "multipart":
            boundary = uuid.uuid4().hex
            head = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="input"; filename="input"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            body = b"".join((head, chunk, f"\r\n--{boundary}--\r\n".encode()))
            content_type = f"multipart/form-data; boundary={boundary}"
        elif form == "bytes-array":
            body = b"[" + b",".join([_BYTE_TEXT[b] for b in chunk]) + b"]"
            content_type = "application/json"
        else:
            body = b'"' + base64.b64encode(chunk) + b'"'
            content_type = "application/json"
        self._exchange(
            "POST", path, "chunk", meta, data=body, content_type=content_type, deadline=deadline, idempotent=False
        )

    def _do_close(self, job_id: str, deadline: float | None, meta: Mapping[str, str]) -> EdgeJob:
        path = f"/api/jobs/{_q(job_id)}/close"
        data = self._exchange("POST", path, "close", meta, deadline=deadline, idempotent=False)
        return EdgeJob.from_answer(_mapping(data), fallback_id=job_id)

    def _do_get_job(self, job_id: str, deadline: float | None, meta: Mapping[str, str]) -> EdgeJob:
        data = self._exchange("GET", f"/api/jobs/{_q(job_id)}", "status", meta, deadline=deadline)
        return EdgeJob.from_answer(_mapping(data), fallback_id=job_id)

    def _do_get_results(self, job_id: str, deadline: float | None, meta: Mapping[str, str]) -> EdgeResults:
        return EdgeResults.from_answer(
            _mapping(self._exchange("GET", f"/api/results/{_q(job_id)}", "results", meta, deadline=deadline))
        )

    def _do_cancel(self, job_id: str, *, retried: bool, meta: Mapping[str, str]) -> EdgeJob:
        path = f"/api/jobs/{_q(job_id)}"
        if retried:
            data = self._exchange("DELETE", path, "cancel", meta)
        else:
            data = self._request_once("DELETE", path, "cancel", headers=meta)
        return EdgeJob.from_answer(_mapping(data), fallback_id=job_id)

    def _do_list_jobs(
        self, deadline: float | None, meta: Mapping[str, str], wanted: Mapping[str, str]
    ) -> list[JobSummary]:
        path = "/api/jobs?" + urllib.parse.urlencode(wanted) if wanted else "/api/jobs"
        data = self._exchange("GET", path, "list", meta, deadline=deadline)
        items = data if isinstance(data, list) else _mapping(data).get("jobs") or []
        return [JobSummary.from_answer(item) for item in items if isinstance(item, Mapping)]


def _mapping(data: Any) -> Mapping[str, Any]:
    return data if isinstance(data, Mapping) else {}


def _reason(error: BaseException) -> str:
    """The innermost cause of a connection failure, short (e.g. "[Errno 111] Connection refused")."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    text = str(error)
    # urllib3 prefixes its own wrapper text ("<HTTPConnection ...>: Failed to establish a new connection: ").
    return text.rsplit(": ", 1)[-1] if "Failed to establish" in text else text


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")
