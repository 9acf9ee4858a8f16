"""The HTTP/JSON face: the edge's grpc-gateway (paths of edge-http-api.md, lowerCamelCase answers,
`{"code","message","details"}` errors), and the emulator's own admin paths under /_emulator."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from worker.emulator.bodies import decode_chunk
from worker.emulator.config import gateway_takes_base64_chunks
from worker.emulator.errors import (
    INTERNAL,
    INVALID_ARGUMENT,
    NOT_FOUND,
    RESOURCE_EXHAUSTED,
    UNIMPLEMENTED,
    EdgeError,
    injected_unavailable,
    invalid,
)
from worker.emulator.state import EdgeState
from worker.emulator.submission import JobFilter, field, optional_number, parse_json_object, parse_submission

# A refused body up to this size is read and thrown away so the client, still sending, gets to read the
# 429; a larger one costs more to drain than a reconnect, so the connection is closed instead.
_DRAIN_LIMIT_BYTES = 64 * 1024 * 1024
_FACE = "http"


class HttpFace:
    """Serves one EdgeState over HTTP in a daemon thread; start() after stop() rebinds the same port."""

    def __init__(self, state: EdgeState, host: str, port: int) -> None:
        self.state = state
        self.host = host
        self.port = port
        self.takes_base64_chunks = gateway_takes_base64_chunks(state.config.gateway)
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        server = _HTTPServer((self.host, self.port), self)
        self.port = int(server.socket.getsockname()[1])
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"edge-emulator-{self.port}", daemon=True
        )
        self._server, self._thread = server, thread
        thread.start()

    def stop(self) -> None:
        """Close the listening socket and cut every open connection."""
        server, thread = self._server, self._thread
        self._server, self._thread = None, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()
        if thread is not None:
            thread.join()

    # ----- routing ---------------------------------------------------------------------------------

    def serve_api(self, method: str, segments: list[str], query: str, body: bytes, content_type: str) -> Any:
        state = self.state
        match segments:
            case ["jobs", "features"]:
                self._route("features", method, "GET")
                return state.features()
            case ["jobs"]:
                if method == "GET":
                    state.count_call("list", _FACE)
                    return state.list_jobs(JobFilter.parse(dict(parse_qsl(query))))
                self._route("submit", method, "POST")
                return state.submit(parse_submission(parse_json_object(body), state.models))
            case ["jobs", job_id]:
                if method == "DELETE":
                    state.count_call("cancel", _FACE)
                    return state.cancel(job_id)
                self._route("status", method, "GET")
                return state.status(job_id)
            case ["jobs", job_id, "close"]:
                self._route("close", method, "POST")
                return state.close(job_id)
            case ["jobs", job_id, source, input_name]:
                self._route("chunk", method, "POST")
                try:
                    data = decode_chunk(body, content_type, takes_base64=self.takes_base64_chunks)
                    return state.append(job_id, source, input_name, data)
                except EdgeError:
                    state.count_refused_chunk()
                    raise
            case ["results", job_id]:
                self._route("results", method, "GET")
                return state.results(job_id)
        raise EdgeError(NOT_FOUND, "Not Found")

    def _route(self, call: str, method: str, allowed: str) -> None:
        if method != allowed:
            raise EdgeError(UNIMPLEMENTED, "Method Not Allowed")
        self.state.count_call(call, _FACE)

    def serve_admin(self, method: str, segments: list[str], body: bytes) -> dict[str, Any]:
        match segments:
            case ["stats"]:
                _allow(method, "GET")
                return self.state.stats()
            case ["faults"]:
                _allow(method, "POST")
                return self._apply_faults(parse_json_object(body, allow_empty=True))
            case ["reset"]:
                _allow(method, "POST")
                self.state.reset_stats()
                return {}
        raise EdgeError(NOT_FOUND, "Not Found")

    def _apply_faults(self, document: dict[str, Any]) -> dict[str, Any]:
        fail_rate = optional_number(document, "fail_rate")
        latency_s = optional_number(document, "latency_s")
        forget_jobs = field(document, "forget_jobs")
        if forget_jobs is not None and not isinstance(forget_jobs, bool):
            raise invalid("forget_jobs must be a boolean")
        try:
            return self.state.set_faults(fail_rate=fail_rate, forget_jobs=forget_jobs, latency_s=latency_s)
        except ValueError as exc:
            raise invalid(str(exc)) from None


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise EdgeError(UNIMPLEMENTED, "Method Not Allowed")


class _BodyTooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


class _BodyUnreadable(Exception):
    """The client sent a malformed or truncated body; the connection is closed without an answer."""


class _HTTPServer(ThreadingHTTPServer):
    """A threading server that remembers its connections so stop() can cut them."""

    daemon_threads = True
    block_on_close = False  # stop() closes the connections itself; idle keep-alive threads would hang a join
    allow_reuse_address = True  # restart on the same port while old connections sit in TIME_WAIT
    request_queue_size = 256  # benchmarks open many connections at once; a full backlog costs 1 s SYN retries

    def __init__(self, address: tuple[str, int], face: HttpFace) -> None:
        self.face = face
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            # Wakes the handler thread blocked reading the next request; it then closes the socket.
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away (or stop() cutting it off) is normal here; anything else is a bug.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without TCP_NODELAY, delayed ACKs add ~40 ms per answer.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: a line per request would dominate the cost of a benchmark."""

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def _handle(self, method: str) -> None:
        face = self.server.face
        parts = urlsplit(self.path)
        segments = [unquote(part) for part in parts.path.split("/")[1:]]
        area = segments[0] if segments else ""
        limit = face.state.config.max_request_bytes
        try:
            if area == "api" and face.state.draw_injected_failure():
                with contextlib.suppress(_BodyTooLarge):
                    self._read_body(limit)
                raise injected_unavailable()
            try:
                body = self._read_body(limit)
            except _BodyTooLarge as exc:
                if area == "api":
                    face.state.count_too_large()
                raise EdgeError(
                    RESOURCE_EXHAUSTED, f"grpc: received message larger than max ({exc.size} vs. {limit})"
                ) from None
            if area == "api":
                trace = (self.headers.get("traceparent"), self.headers.get("tracestate"))
                face.state.record_trace(_FACE, f"{method} {parts.path}", *trace)
                content_type = self.headers.get("Content-Type", "")
                payload = face.serve_api(method, segments[1:], parts.query, body, content_type)
            elif area == "_emulator":
                payload = face.serve_admin(method, segments[1:], body)
            else:
                raise EdgeError(NOT_FOUND, "Not Found")
            self._send_json(200, payload)
        except EdgeError as exc:
            self._send_json(exc.http_status, exc.as_json())
        except _BodyUnreadable:
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - an emulator bug must answer 500, not drop the connection
            self._send_json(500, {"code": INTERNAL, "message": f"emulator error: {exc!r}", "details": []})

    def _read_body(self, limit: int) -> bytes:
        """The request body; over `limit` it is drained (or the connection marked to close) and refused."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked_body(limit)
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return b""
        try:
            length = int(length_text)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise EdgeError(INVALID_ARGUMENT, f"invalid Content-Length {length_text!r}")
        if length > limit:
            if length <= _DRAIN_LIMIT_BYTES:
                self._discard(length)
            else:
                self.close_connection = True
            raise _BodyTooLarge(length)
        body = self.rfile.read(length)
        if len(body) < length:
            raise _BodyUnreadable
        return body

    def _discard(self, length: int) -> None:
        remaining = length
        while remaining > 0:
            piece = self.rfile.read(min(remaining, 65536))
            if not piece:
                raise _BodyUnreadable
            remaining -= len(piece)

    def _read_chunked_body(self, limit: int) -> bytes:
        pieces: list[bytes] = []
        total = 0
        while True:
            size_line = self.rfile.readline(65537)
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BodyUnreadable from None
            if size == 0:
                break
            total += size
            if total > limit:
                self.close_connection = True
                raise _BodyTooLarge(total)
            piece = self.rfile.read(size)
            if len(piece) < size or self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise _BodyUnreadable
            pieces.append(piece)
        while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
            pass  # trailers are ignored
        return b"".join(pieces)

    def _send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
