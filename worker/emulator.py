"""A local stand-in for the Modzy Edge HTTP/JSON gateway, for trying the worker, its tests and benchmarks.

It speaks the endpoints of edge-http-api.md with grpc-gateway v2 conventions (lowerCamelCase answers,
`{"code","message","details"}` errors). Jobs run in virtual time, with no scheduler thread and no
sleeping: every call first advances the schedule to `time.monotonic()` (waiting jobs take the slots
freed since the last call, at the moment each was freed), then derives statuses from the clock.
Inputs are never kept: each one is reduced to a sha256 and a size, which the fake model echoes back
so tests can prove the bytes arrived intact.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import heapq
import itertools
import json
import math
import random
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.message import Message
from email.utils import collapse_rfc2231_value
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["EdgeEmulator", "EmulatorConfig", "main"]

# gRPC status codes the gateway maps to HTTP statuses.
_INVALID_ARGUMENT = 3
_NOT_FOUND = 5
_RESOURCE_EXHAUSTED = 8
_FAILED_PRECONDITION = 9
_UNIMPLEMENTED = 12
_INTERNAL = 13
_UNAVAILABLE = 14
_HTTP_STATUS_BY_GRPC_CODE = {
    _INVALID_ARGUMENT: 400,
    _NOT_FOUND: 404,
    _RESOURCE_EXHAUSTED: 429,
    _FAILED_PRECONDITION: 400,
    _UNIMPLEMENTED: 501,
    _INTERNAL: 500,
    _UNAVAILABLE: 503,
}

MAXIMUM_INPUT_CHUNKS = 1000
MAXIMUM_INPUTS_PER_JOB = 1000
CALL_NAMES = ("submit", "status", "cancel", "results", "features", "chunk", "close")

# A refused body up to this size is read and thrown away so the client, still sending, gets to read the
# 429; a larger one costs more to drain than a reconnect, so the connection is closed instead.
_DRAIN_LIMIT_BYTES = 64 * 1024 * 1024
# Enough of each input to see a b"FAIL" marker and the sleep model's "seconds" text.
_HEAD_BYTES = 64
_FAIL_MARKER = b"FAIL"
_SLEEP_MODEL = "sleep"
_SLEEP_INPUT = "seconds"
_PROTOBUF_STRUCT_TYPE = "type.googleapis.com/google.protobuf.Struct"


@dataclass
class EmulatorConfig:
    """Settings of one emulated edge server."""

    host: str = "127.0.0.1"
    port: int = 55000  # 0 = pick a free port
    latency_s: float = 0.05  # how long one job runs once it has a slot
    capacity: int = 8  # jobs running at once; further jobs wait in SUBMITTED; 0 = unlimited
    max_request_bytes: int = 4 * 1024 * 1024  # like a stock gateway's gRPC receive limit
    chunk_size: str = "1M"  # reported as inputChunkMaximumSize in /api/jobs/features
    chunk_size_bytes: int = 1_000_000  # the limit actually enforced on one chunk body's decoded bytes
    # "identifier:version" known to the edge; "sleep" runs for the seconds given in its input "seconds".
    models: tuple[str, ...] = ("ed542963de:1.0.1", "sha256:1.0.0", "sleep:1.0.0")
    fail_rate: float = 0.0  # share of API calls answered 503 UNAVAILABLE (fault injection)
    seed: int | None = None


class _RpcError(Exception):
    """An error answer in grpc-gateway shape."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS_BY_GRPC_CODE.get(self.code, 500)

    def as_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": []}


def _invalid(message: str) -> _RpcError:
    return _RpcError(_INVALID_ARGUMENT, message)


class _InputDigest:
    """What the emulator keeps of one model input: a running sha256, its size and its first bytes."""

    __slots__ = ("_sha", "chunks", "head", "size")

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.size = 0
        self.chunks = 0
        self.head = b""

    @classmethod
    def of(cls, data: bytes) -> _InputDigest:
        digest = cls()
        digest.update(data)
        return digest

    def update(self, data: bytes) -> None:
        self._sha.update(data)
        self.size += len(data)
        self.chunks += 1
        if len(self.head) < _HEAD_BYTES:
            self.head += data[: _HEAD_BYTES - len(self.head)]

    def as_json(self) -> dict[str, Any]:
        return {"sha256": self._sha.hexdigest(), "size": self.size}


class _Job:
    """One job; start and end are fixed when it takes a slot, and its status follows the clock."""

    __slots__ = (
        "created_at",
        "duration_s",
        "end",
        "explain",
        "failed_sources",
        "forgotten",
        "frozen_status",
        "halted_at",
        "id",
        "identifier",
        "input_type",
        "inputs",
        "scheduled",
        "start",
        "submitted_at",
        "version",
    )

    def __init__(
        self,
        *,
        identifier: str,
        version: str,
        explain: bool,
        input_type: str,
        inputs: dict[str, dict[str, _InputDigest]],
        created_at: float,
    ) -> None:
        self.id = str(uuid.uuid4())
        self.identifier = identifier
        self.version = version
        self.explain = explain
        self.input_type = input_type
        self.inputs = inputs
        self.created_at = created_at
        self.submitted_at = created_at
        self.duration_s = 0.0
        self.scheduled = False  # submitted with inputs, or closed; False while OPEN
        # Monotonic times; None while the job waits for a slot (or is OPEN).
        self.start: float | None = None
        self.end: float | None = None
        # When a cancel or an edge restart cut the job short; its interval ends there.
        self.halted_at: float | None = None
        # A status that no longer follows the clock (CANCELED, or whatever it was when forgotten).
        self.frozen_status: str | None = None
        self.forgotten = False
        self.failed_sources: frozenset[str] = frozenset()

    def status(self, now: float) -> str:
        if self.frozen_status is not None:
            return self.frozen_status
        if not self.scheduled:
            return "OPEN"
        if self.start is None or self.end is None or now < self.start:
            return "SUBMITTED"
        if now < self.end:
            return "IN_PROGRESS"
        return "FAILED" if len(self.failed_sources) == len(self.inputs) else "COMPLETE"

    def is_running(self, now: float) -> bool:
        return (
            self.halted_at is None and self.start is not None and self.end is not None and self.start <= now < self.end
        )

    def interval(self, now: float) -> tuple[float, float] | None:
        """The part of [start, end) that has really elapsed, cut at a cancel or a restart."""
        if self.start is None or self.end is None:
            return None
        end = min(self.end, now)
        if self.halted_at is not None:
            end = min(end, self.halted_at)
        return (self.start, end) if end > self.start else None

    def updated_at(self, now: float) -> float:
        moments = [self.created_at, self.submitted_at]
        if self.start is not None and self.start <= now:
            moments.append(self.start)
        if self.end is not None and self.end <= now:
            moments.append(self.end)
        if self.halted_at is not None:
            moments.append(self.halted_at)
        return max(moment for moment in moments if moment <= now) if moments else now

    def finished_at(self, now: float) -> float:
        if self.halted_at is not None:
            return self.halted_at
        if self.end is not None and self.end <= now:
            return self.end
        return now


@dataclass(frozen=True, slots=True)
class _Submission:
    identifier: str
    version: str
    explain: bool
    input_type: str  # "text", "embedded" or "open"
    inputs: dict[str, dict[str, _InputDigest]]


class EdgeEmulator:
    """An in-process HTTP server that behaves like a Modzy Edge gateway, with fault injection."""

    def __init__(self, config: EmulatorConfig) -> None:
        _validate_config(config)
        self._config = replace(config)
        self._models = frozenset(_split_model(model) for model in config.models)
        self._port = config.port
        self._lock = threading.Lock()
        self._random = random.Random(config.seed)
        self._fail_rate = config.fail_rate
        self._latency_s = config.latency_s
        # Time: monotonic for scheduling, anchored once to the wall clock for RFC 3339 timestamps.
        self._mono0 = time.monotonic()
        self._wall0 = time.time()
        # Jobs the edge knows, by id; forget_all_jobs() empties it.
        self._jobs: dict[str, _Job] = {}
        # A heap of (free-at, tie-break, job holding the slot or None): with a capacity, one entry per
        # slot plus stale entries of jobs cut short (their slot was pushed again, free at the cut);
        # unlimited, one entry per job until it ends.
        self._slots: list[tuple[float, int, _Job | None]] = []
        self._tie_break = itertools.count()
        # Jobs waiting for a slot, in FIFO order; canceled ones are skipped when they reach the front.
        self._queue: deque[_Job] = deque()
        self._reset_slots(self._mono0)
        self._reset_counters()
        # Serving.
        self._server_lock = threading.Lock()
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._started_once = False
        self._stopped = threading.Event()
        self._stopped.set()

    # ----- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind and serve in a daemon thread; after stop() it rebinds the same port."""
        with self._server_lock:
            if self._server is not None:
                return
            server = _HTTPServer((self._config.host, self._port), self)
            self._port = int(server.socket.getsockname()[1])
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"edge-emulator-{self._port}",
                daemon=True,
            )
            self._server, self._thread = server, thread
            self._started_once = True
            self._stopped.clear()
            thread.start()

    def stop(self) -> None:
        """Close the listening socket and every open connection; job state is kept."""
        with self._server_lock:
            server, thread = self._server, self._thread
            self._server, self._thread = None, None
            if server is None:
                return
            server.shutdown()
            server.server_close()
            server.close_connections()
            if thread is not None:
                thread.join()
            self._stopped.set()

    def serve_forever(self) -> None:
        """Serve until stop() is called (starting first if never started); for the CLI."""
        with self._server_lock:
            start_now = not self._started_once
        if start_now:
            self.start()
        self._stopped.wait()

    def __enter__(self) -> EdgeEmulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (the configured one before the first start)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL clients use, e.g. "http://127.0.0.1:55000"."""
        host = self._config.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._port}"

    # ----- faults and statistics -------------------------------------------------------------------

    def set_faults(
        self,
        *,
        fail_rate: float | None = None,
        forget_jobs: bool | None = None,
        latency_s: float | None = None,
    ) -> None:
        """Change fault injection; forget_jobs=True forgets every job once, like an edge restart."""
        if fail_rate is not None and not 0.0 <= fail_rate <= 1.0:
            raise ValueError(f"fail_rate must be between 0 and 1, got {fail_rate}")
        if latency_s is not None and not (math.isfinite(latency_s) and latency_s >= 0):
            raise ValueError(f"latency_s must be a finite number >= 0, got {latency_s}")
        with self._lock:
            if fail_rate is not None:
                self._fail_rate = fail_rate
            if latency_s is not None:
                self._latency_s = latency_s
        if forget_jobs:
            self.forget_all_jobs()

    def forget_all_jobs(self) -> None:
        """Forget every job as a restarted edge would: later calls about them answer 404."""
        with self._lock:
            now = self._advance()
            for job in self._jobs.values():
                status = job.status(now)
                if status not in ("COMPLETE", "FAILED", "CANCELED"):
                    job.frozen_status = status
                    job.halted_at = now
                job.forgotten = True
            self._jobs.clear()
            self._reset_slots(now)

    def reset_stats(self) -> None:
        """Zero the counters and start a new list of jobs; peak_running then covers only jobs created after."""
        with self._lock:
            self._reset_counters()

    def stats(self) -> dict[str, Any]:
        """Counters since the last reset, as a JSON-able dict."""
        with self._lock:
            now = self._advance()
            return {
                "jobs_submitted": self._jobs_submitted,
                "jobs_closed": self._jobs_closed,
                "jobs_canceled": self._jobs_canceled,
                "calls": dict(self._calls),
                "failed_calls_injected": self._failed_calls_injected,
                "rejected_too_large": self._rejected_too_large,
                "peak_running": _peak_overlap(job.interval(now) for job in self._stats_jobs),
                "running_now": sum(1 for _, _, job in self._slots if job is not None and job.is_running(now)),
                "waiting_now": sum(1 for job in self._queue if job.frozen_status is None),
                "fail_rate": self._fail_rate,
                "latency_s": self._latency_s,
                "jobs": [self._stats_entry(job, now) for job in self._stats_jobs],
            }

    def _reset_counters(self) -> None:
        self._jobs_submitted = 0
        self._jobs_closed = 0
        self._jobs_canceled = 0
        self._calls = dict.fromkeys(CALL_NAMES, 0)
        self._failed_calls_injected = 0
        self._rejected_too_large = 0
        self._stats_jobs: list[_Job] = []

    def _stats_entry(self, job: _Job, now: float) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "id": job.id,
            "model": job.identifier,
            "version": job.version,
            "status": job.status(now),
            "explain": job.explain,
            "input_type": job.input_type,
            "inputs": {
                source: {name: digest.as_json() for name, digest in values.items()}
                for source, values in job.inputs.items()
            },
        }
        if job.forgotten:
            entry["forgotten"] = True
        return entry

    # ----- request plumbing (called by the HTTP handler) -------------------------------------------

    def _draw_injected_failure(self) -> bool:
        with self._lock:
            if self._fail_rate <= 0.0 or self._random.random() >= self._fail_rate:
                return False
            self._failed_calls_injected += 1
            return True

    def _count_too_large(self) -> None:
        with self._lock:
            self._rejected_too_large += 1

    def _count_call(self, name: str) -> None:
        with self._lock:
            self._calls[name] += 1

    def _serve_api(self, method: str, segments: list[str], body: bytes, content_type: str) -> dict[str, Any]:
        match segments:
            case ["jobs", "features"]:
                self._route("features", method, "GET")
                return self._features()
            case ["jobs"]:
                self._route("submit", method, "POST")
                return self._submit(body)
            case ["jobs", job_id]:
                if method == "DELETE":
                    self._count_call("cancel")
                    return self._cancel(job_id)
                self._route("status", method, "GET")
                return self._status(job_id)
            case ["jobs", job_id, "close"]:
                self._route("close", method, "POST")
                return self._close(job_id)
            case ["jobs", job_id, source, input_name]:
                self._route("chunk", method, "POST")
                return self._append_chunk(job_id, source, input_name, body, content_type)
            case ["results", job_id]:
                self._route("results", method, "GET")
                return self._results(job_id)
        raise _RpcError(_NOT_FOUND, "Not Found")

    def _route(self, call: str, method: str, allowed: str) -> None:
        if method != allowed:
            raise _RpcError(_UNIMPLEMENTED, "Method Not Allowed")
        self._count_call(call)

    def _serve_admin(self, method: str, segments: list[str], body: bytes) -> dict[str, Any]:
        match segments:
            case ["stats"]:
                if method != "GET":
                    raise _RpcError(_UNIMPLEMENTED, "Method Not Allowed")
                return self.stats()
            case ["faults"]:
                if method != "POST":
                    raise _RpcError(_UNIMPLEMENTED, "Method Not Allowed")
                return self._apply_faults(_parse_json_object(body, allow_empty=True))
            case ["reset"]:
                if method != "POST":
                    raise _RpcError(_UNIMPLEMENTED, "Method Not Allowed")
                self.reset_stats()
                return {}
        raise _RpcError(_NOT_FOUND, "Not Found")

    def _apply_faults(self, document: dict[str, Any]) -> dict[str, Any]:
        fail_rate = _optional_number(document, "fail_rate")
        latency_s = _optional_number(document, "latency_s")
        forget_jobs = _field(document, "forget_jobs")
        if forget_jobs is not None and not isinstance(forget_jobs, bool):
            raise _invalid("forget_jobs must be a boolean")
        try:
            self.set_faults(fail_rate=fail_rate, forget_jobs=forget_jobs, latency_s=latency_s)
        except ValueError as exc:
            raise _invalid(str(exc)) from None
        with self._lock:
            return {"fail_rate": self._fail_rate, "latency_s": self._latency_s}

    # ----- the API ---------------------------------------------------------------------------------

    def _features(self) -> dict[str, Any]:
        return {
            "inputChunkMaximumSize": self._config.chunk_size,
            "maximumInputChunks": MAXIMUM_INPUT_CHUNKS,
            "maximumInputsPerJob": MAXIMUM_INPUTS_PER_JOB,
        }

    def _submit(self, body: bytes) -> dict[str, Any]:
        # Decoding and hashing happen outside the lock: they are the expensive part.
        submission = _parse_submission(body, self._models)
        with self._lock:
            now = self._advance()
            job = _Job(
                identifier=submission.identifier,
                version=submission.version,
                explain=submission.explain,
                input_type=submission.input_type,
                inputs=submission.inputs,
                created_at=now,
            )
            self._jobs[job.id] = job
            self._stats_jobs.append(job)
            self._jobs_submitted += 1
            if submission.input_type != "open":
                self._schedule(job, now)
            return self._receipt(job, now)

    def _status(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            now = self._advance()
            return self._details(self._find(job_id), now)

    def _cancel(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            now = self._advance()
            job = self._find(job_id)
            status = job.status(now)
            if status in ("COMPLETE", "FAILED", "CANCELED"):
                return self._details(job, now)
            job.frozen_status = "CANCELED"
            self._jobs_canceled += 1
            if status == "IN_PROGRESS":
                self._release_slot(job, now)
            elif status == "SUBMITTED":
                job.halted_at = now  # stops its clock; _advance() skips it when it reaches the front
            return self._details(job, now)

    def _append_chunk(
        self, job_id: str, source: str, input_name: str, body: bytes, content_type: str
    ) -> dict[str, Any]:
        data = _decode_chunk(body, content_type)
        if len(data) > self._config.chunk_size_bytes:
            raise _invalid(f"chunk of {len(data)} bytes is larger than the maximum of {self._config.chunk_size_bytes}")
        with self._lock:
            now = self._advance()
            job = self._find(job_id)
            status = job.status(now)
            if status != "OPEN":
                raise _RpcError(_FAILED_PRECONDITION, f"job {job_id} is {status}, not OPEN")
            values = job.inputs.get(source)
            if values is None:
                if len(job.inputs) >= MAXIMUM_INPUTS_PER_JOB:
                    raise _invalid(f"job {job_id} already has {MAXIMUM_INPUTS_PER_JOB} inputs")
                values = job.inputs[source] = {}
            digest = values.get(input_name)
            if digest is None:
                digest = values[input_name] = _InputDigest()
            if digest.chunks >= MAXIMUM_INPUT_CHUNKS:
                raise _invalid(f"input {source}/{input_name} already has {MAXIMUM_INPUT_CHUNKS} chunks")
            digest.update(data)
            return {}

    def _close(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            now = self._advance()
            job = self._find(job_id)
            status = job.status(now)
            if status != "OPEN":
                raise _RpcError(_FAILED_PRECONDITION, f"job {job_id} is {status}, not OPEN")
            if not job.inputs:
                raise _RpcError(_FAILED_PRECONDITION, f"job {job_id} has no inputs to close")
            self._jobs_closed += 1
            self._schedule(job, now)
            return self._receipt(job, now)

    def _results(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            now = self._advance()
            job = self._find(job_id)
            status = job.status(now)
            finished = status in ("COMPLETE", "FAILED", "CANCELED")
            ran_to_end = status in ("COMPLETE", "FAILED")
            results: dict[str, Any] = {}
            failures: dict[str, Any] = {}
            if ran_to_end:
                for source in job.inputs:
                    if source in job.failed_sources:
                        failures[source] = {
                            "@type": _PROTOBUF_STRUCT_TYPE,
                            "error": "input starts with FAIL (injected model failure)",
                            "source": source,
                        }
                    else:
                        results[source] = self._input_result(job, source)
            latency_ms = job.duration_s * 1000.0
            return {
                "jobIdentifier": job.id,
                "accountIdentifier": "",
                "total": len(job.inputs),
                "completed": len(results),
                "failed": len(failures),
                "finished": finished,
                "explained": job.explain,
                "submittedAt": self._timestamp(job.submitted_at),
                "elapsedTime": self._elapsed_ms(job, now),
                "averageModelLatency": latency_ms if ran_to_end else 0.0,
                "results": results,
                "failures": failures,
            }

    # ----- scheduling ------------------------------------------------------------------------------

    def _reset_slots(self, now: float) -> None:
        self._slots = [(now, next(self._tie_break), None) for _ in range(self._config.capacity)]
        self._queue.clear()

    def _advance(self) -> float:
        """Bring the schedule up to now: hand every slot freed so far to the next waiting job."""
        now = time.monotonic()
        slots = self._slots
        if self._config.capacity == 0:
            while slots and slots[0][0] <= now:
                heapq.heappop(slots)  # jobs that have ended
            return now
        while slots:
            free_at, _, holder = slots[0]
            if holder is not None and holder.halted_at is not None:
                heapq.heappop(slots)  # stale: the slot went back to the heap when its job was cut short
                continue
            if not self._queue or free_at > now:
                break
            job = self._queue.popleft()
            if job.frozen_status is not None:
                continue  # canceled while it waited
            # The job has waited since before the slot freed up, unless it came later and found it free.
            job.start = max(free_at, job.submitted_at)
            job.end = job.start + job.duration_s
            heapq.heapreplace(slots, (job.end, next(self._tie_break), job))
        return now

    def _schedule(self, job: _Job, now: float) -> None:
        """Queue a job with all its inputs; it starts at once if a slot is free."""
        job.scheduled = True
        job.submitted_at = now
        job.failed_sources = frozenset(
            source
            for source, values in job.inputs.items()
            if any(digest.head.startswith(_FAIL_MARKER) for digest in values.values())
        )
        job.duration_s = self._duration_for(job)
        if self._config.capacity == 0:
            job.start, job.end = now, now + job.duration_s
            heapq.heappush(self._slots, (job.end, next(self._tie_break), job))
            return
        self._queue.append(job)
        self._advance()

    def _release_slot(self, job: _Job, now: float) -> None:
        """Cut a running job short; with a capacity its slot is free from now on."""
        job.halted_at = now
        if self._config.capacity > 0:
            heapq.heappush(self._slots, (now, next(self._tie_break), None))
            self._advance()

    def _duration_for(self, job: _Job) -> float:
        if job.identifier == _SLEEP_MODEL:
            for values in job.inputs.values():
                digest = values.get(_SLEEP_INPUT)
                if digest is not None:
                    try:
                        seconds = float(digest.head.decode("utf-8").strip())
                    except ValueError:
                        break
                    if math.isfinite(seconds) and seconds >= 0:
                        return seconds
                    break
        return self._latency_s

    # ----- answers ---------------------------------------------------------------------------------

    def _find(self, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise _RpcError(_NOT_FOUND, f"job {job_id} not found")
        return job

    def _timestamp(self, moment: float) -> str:
        wall = self._wall0 + (moment - self._mono0)
        stamp = datetime.fromtimestamp(wall, UTC)
        return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"

    def _elapsed_ms(self, job: _Job, now: float) -> int:
        if not job.scheduled:
            return 0
        return max(0, int((job.finished_at(now) - job.submitted_at) * 1000))

    def _counts(self, job: _Job, now: float) -> tuple[int, int, int]:
        """(pending, completed, failed) for the job's status right now."""
        status = job.status(now)
        total = len(job.inputs)
        if status in ("COMPLETE", "FAILED"):
            failed = len(job.failed_sources)
            return 0, total - failed, failed
        if status == "CANCELED":
            return 0, 0, 0
        return total, 0, 0

    def _model_json(self, job: _Job) -> dict[str, Any]:
        return {"identifier": job.identifier, "version": job.version, "name": f"Emulated {job.identifier}"}

    def _receipt(self, job: _Job, now: float) -> dict[str, Any]:
        pending, completed, failed = self._counts(job, now)
        return {
            "jobIdentifier": job.id,
            "model": self._model_json(job),
            "accessKey": "",
            "totalInputs": len(job.inputs),
            "inputByteAmount": sum(d.size for values in job.inputs.values() for d in values.values()),
            "jobInputs": {"identifier": list(job.inputs)},
            "submittedAt": self._timestamp(job.submitted_at),
            "status": "OPEN" if job.start is None else "SUBMITTED",
            "details": {
                "accountIdentifier": "",
                "createdAt": self._timestamp(job.created_at),
                "updatedAt": self._timestamp(job.updated_at(now)),
                "total": len(job.inputs),
                "pending": pending,
                "completed": completed,
                "failed": failed,
                "elapsedTime": self._elapsed_ms(job, now),
            },
            "explain": job.explain,
        }

    def _details(self, job: _Job, now: float) -> dict[str, Any]:
        pending, completed, failed = self._counts(job, now)
        return {
            "jobIdentifier": job.id,
            "model": self._model_json(job),
            "status": job.status(now),
            "createdAt": self._timestamp(job.created_at),
            "updatedAt": self._timestamp(job.updated_at(now)),
            "submittedAt": self._timestamp(job.submitted_at),
            "total": len(job.inputs),
            "pending": pending,
            "completed": completed,
            "failed": failed,
            "elapsedTime": self._elapsed_ms(job, now),
            "jobInputs": [{"identifier": source} for source in job.inputs],
        }

    def _input_result(self, job: _Job, source: str) -> dict[str, Any]:
        assert job.start is not None and job.end is not None  # only asked once the job ran to its end
        output: dict[str, Any] = {
            "model": job.identifier,
            "version": job.version,
            "explain": job.explain,
            "inputs": {name: digest.as_json() for name, digest in job.inputs[source].items()},
        }
        if job.explain:
            output["explanation"] = {"method": "emulated"}
        return {
            "status": "SUCCESSFUL",
            "engine": "emulator",
            "modelLatency": job.duration_s * 1000.0,
            "queueTime": (job.start - job.submitted_at) * 1000.0,
            "startTime": self._timestamp(job.start),
            "endTime": self._timestamp(job.end),
            "results.json": output,
        }


# ----- request parsing -----------------------------------------------------------------------------


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def _field(document: dict[str, Any], snake_name: str) -> Any:
    """A request field by its snake_case name or its lowerCamelCase JSON name."""
    if snake_name in document:
        return document[snake_name]
    return document.get(_camel(snake_name))


def _optional_number(document: dict[str, Any], snake_name: str) -> float | None:
    value = _field(document, snake_name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(f"{snake_name} must be a number")
    return float(value)


def _parse_json_object(body: bytes, *, allow_empty: bool = False) -> dict[str, Any]:
    if not body.strip():
        if allow_empty:
            return {}
        raise _invalid("request body is empty")
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise _invalid(f"request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise _invalid("request body must be a JSON object")
    return document


def _parse_submission(body: bytes, models: frozenset[tuple[str, str]]) -> _Submission:
    document = _parse_json_object(body)
    model = _field(document, "model")
    if not isinstance(model, dict):
        raise _invalid("model must be an object with identifier and version")
    identifier = _field(model, "identifier")
    version = _field(model, "version")
    if not (isinstance(identifier, str) and identifier and isinstance(version, str) and version):
        raise _invalid("model.identifier and model.version must be non-empty strings")
    explain = _field(document, "explain")
    if explain is None:
        explain = False
    if not isinstance(explain, bool):
        raise _invalid("explain must be a boolean")
    if (identifier, version) not in models:
        raise _RpcError(_NOT_FOUND, f"model {identifier}:{version} not found")
    job_input = _field(document, "input")
    if job_input is None:
        return _Submission(identifier, version, explain, "open", {})
    if not isinstance(job_input, dict):
        raise _invalid("input must be an object with type and sources")
    input_type = _field(job_input, "type")
    if input_type not in ("text", "embedded"):
        raise _invalid(f"input type {input_type!r} is not supported (use text or embedded)")
    sources = _field(job_input, "sources")
    if not isinstance(sources, dict) or not sources:
        raise _invalid("input.sources must be a non-empty object")
    if len(sources) > MAXIMUM_INPUTS_PER_JOB:
        raise _invalid(f"a job takes at most {MAXIMUM_INPUTS_PER_JOB} inputs, got {len(sources)}")
    inputs: dict[str, dict[str, _InputDigest]] = {}
    for source, values in sources.items():
        if not isinstance(values, dict) or not values:
            raise _invalid(f"source {source!r} must map model input names to values")
        digests: dict[str, _InputDigest] = {}
        for name, value in values.items():
            if not isinstance(value, str):
                raise _invalid(f"input {source}/{name} must be a string")
            raw = _encode_text(value, source, name) if input_type == "text" else _decode_data_uri(value)
            digests[name] = _InputDigest.of(raw)
        inputs[source] = digests
    return _Submission(identifier, version, explain, input_type, inputs)


def _encode_text(value: str, source: str, name: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise _invalid(f"input {source}/{name} is not valid UTF-8 text") from None


def _decode_data_uri(value: str) -> bytes:
    header, comma, payload = value.partition(",")
    if not (comma and header.startswith("data:") and header.endswith(";base64")):
        raise _invalid("an embedded value must be a data URI: data:<mime>;base64,<data>")
    return _decode_base64(payload, "the data URI payload")


def _decode_base64(text: str, what: str) -> bytes:
    try:
        # validate=True refuses characters outside the standard alphabet and missing padding.
        return base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise _invalid(f"{what} is not standard padded base64: {exc}") from None


def _decode_chunk(body: bytes, content_type: str) -> bytes:
    """A chunk body: multipart/form-data with a part named "input", otherwise a JSON base64 string."""
    if content_type.split(";", 1)[0].strip().lower() == "multipart/form-data":
        return _multipart_part(body, content_type, "input")
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise _invalid(f"chunk body is not valid JSON: {exc}") from None
    if not isinstance(document, str):
        raise _invalid("chunk body must be a JSON string of base64")
    return _decode_base64(document, "the chunk")


def _header_param(header_name: str, header_value: str, param: str) -> str | None:
    message = Message()
    message[header_name] = header_value
    value = message.get_param(param, header=header_name)
    if value is None:
        return None
    return collapse_rfc2231_value(value) if isinstance(value, tuple) else value


def _multipart_part(body: bytes, content_type: str, wanted: str) -> bytes:
    """The content of the form-data part named `wanted` (RFC 7578), found without copying the others."""
    boundary = _header_param("content-type", content_type, "boundary")
    if not boundary:
        raise _invalid("multipart/form-data body without a boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    position = body.find(delimiter)
    if position < 0:
        raise _invalid("multipart body does not contain its boundary")
    position += len(delimiter)
    while not body.startswith(b"--", position):
        line_end = body.find(b"\r\n", position)
        if line_end < 0:
            raise _invalid("multipart body is truncated")
        headers_start = line_end + 2
        if body.startswith(b"\r\n", headers_start):
            headers, content_start = b"", headers_start + 2
        else:
            headers_end = body.find(b"\r\n\r\n", headers_start)
            if headers_end < 0:
                raise _invalid("multipart part headers are truncated")
            headers, content_start = body[headers_start:headers_end], headers_end + 4
        content_end = body.find(b"\r\n" + delimiter, content_start)
        if content_end < 0:
            raise _invalid("multipart part is not terminated by the boundary")
        if _part_name(headers) == wanted:
            return body[content_start:content_end]
        position = content_end + 2 + len(delimiter)
    raise _invalid(f"multipart body has no part named {wanted!r}")


def _part_name(headers: bytes) -> str | None:
    for line in headers.decode("latin-1").split("\r\n"):
        name, colon, value = line.partition(":")
        if colon and name.strip().lower() == "content-disposition":
            return _header_param("content-disposition", value.strip(), "name")
    return None


# ----- HTTP ----------------------------------------------------------------------------------------


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

    def __init__(self, address: tuple[str, int], emulator: EdgeEmulator) -> None:
        self.emulator = emulator
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
        emulator = self.server.emulator
        segments = [unquote(part) for part in urlsplit(self.path).path.split("/")[1:]]
        area = segments[0] if segments else ""
        limit = emulator._config.max_request_bytes
        try:
            if area == "api" and emulator._draw_injected_failure():
                with contextlib.suppress(_BodyTooLarge):
                    self._read_body(limit)
                raise _RpcError(_UNAVAILABLE, "unavailable (injected)")
            try:
                body = self._read_body(limit)
            except _BodyTooLarge as exc:
                if area == "api":
                    emulator._count_too_large()
                raise _RpcError(
                    _RESOURCE_EXHAUSTED, f"grpc: received message larger than max ({exc.size} vs. {limit})"
                ) from None
            if area == "api":
                content_type = self.headers.get("Content-Type", "")
                payload = emulator._serve_api(method, segments[1:], body, content_type)
            elif area == "_emulator":
                payload = emulator._serve_admin(method, segments[1:], body)
            else:
                raise _RpcError(_NOT_FOUND, "Not Found")
            self._send_json(200, payload)
        except _RpcError as exc:
            self._send_json(exc.http_status, exc.as_json())
        except _BodyUnreadable:
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - an emulator bug must answer 500, not drop the connection
            self._send_json(500, {"code": _INTERNAL, "message": f"emulator error: {exc!r}", "details": []})

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
            raise _RpcError(_INVALID_ARGUMENT, f"invalid Content-Length {length_text!r}")
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

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


# ----- helpers -------------------------------------------------------------------------------------


def _split_model(model: str) -> tuple[str, str]:
    identifier, colon, version = model.partition(":")
    if not (colon and identifier and version):
        raise ValueError(f"model {model!r} must be written identifier:version")
    return identifier, version


def _validate_config(config: EmulatorConfig) -> None:
    if not 0 <= config.port <= 65535:
        raise ValueError(f"port must be between 0 and 65535, got {config.port}")
    if not (math.isfinite(config.latency_s) and config.latency_s >= 0):
        raise ValueError(f"latency_s must be a finite number >= 0, got {config.latency_s}")
    if config.capacity < 0:
        raise ValueError(f"capacity must be >= 0, got {config.capacity}")
    if config.max_request_bytes <= 0:
        raise ValueError(f"max_request_bytes must be > 0, got {config.max_request_bytes}")
    if config.chunk_size_bytes <= 0:
        raise ValueError(f"chunk_size_bytes must be > 0, got {config.chunk_size_bytes}")
    if not 0.0 <= config.fail_rate <= 1.0:
        raise ValueError(f"fail_rate must be between 0 and 1, got {config.fail_rate}")
    for model in config.models:
        _split_model(model)


def _peak_overlap(intervals: Iterable[tuple[float, float] | None]) -> int:
    """The largest number of half-open [start, end) intervals that overlap at one moment."""
    events: list[tuple[float, int]] = []
    for interval in intervals:
        if interval is not None:
            events.append((interval[0], 1))
            events.append((interval[1], -1))
    events.sort()  # at equal times an end (-1) sorts before a start (+1): the intervals are half-open
    peak = running = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


_SIZE_PATTERN = re.compile(r"(\d+)\s*([kmgt]?)(i?b?)", re.IGNORECASE)


def _parse_size(text: str) -> int:
    """Bytes in a size like "1M" (powers of 1000) or "1Mi"/"1MB" (powers of 1024, as the SDK reads them)."""
    match = _SIZE_PATTERN.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"size {text!r} is not a number with an optional K/M/G/T unit")
    number, prefix, suffix = int(match[1]), match[2].lower(), match[3]
    if not prefix:
        return number
    base = 1024 if suffix else 1000
    multiplier: int = base ** ("kmgt".index(prefix) + 1)
    return number * multiplier


class _UsageParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(64)  # EX_USAGE, as the interface's exit codes say


def _build_parser() -> argparse.ArgumentParser:
    defaults = EmulatorConfig()
    parser = _UsageParser(
        prog="edge-worker emulator", description="Serve a local stand-in for the Modzy Edge HTTP API."
    )
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--port", type=int, default=defaults.port, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=defaults.latency_s, help="seconds one job runs")
    parser.add_argument("--capacity", type=int, default=defaults.capacity, help="jobs at once; 0 = unlimited")
    parser.add_argument("--max-request-bytes", type=int, default=defaults.max_request_bytes)
    parser.add_argument("--chunk-size", default=defaults.chunk_size, help='e.g. "1M" or "512Ki"')
    parser.add_argument("--fail-rate", type=float, default=defaults.fail_rate)
    parser.add_argument("--seed", type=int, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the emulator in the foreground until SIGTERM or SIGINT; print one JSON line once listening."""
    args = _build_parser().parse_args(argv)
    try:
        config = EmulatorConfig(
            host=args.host,
            port=args.port,
            latency_s=args.latency,
            capacity=args.capacity,
            max_request_bytes=args.max_request_bytes,
            chunk_size=args.chunk_size,
            chunk_size_bytes=_parse_size(args.chunk_size),
            fail_rate=args.fail_rate,
            seed=args.seed,
        )
        emulator = EdgeEmulator(config)
    except ValueError as exc:
        print(f"edge-worker emulator: error: {exc}", file=sys.stderr)
        return 64

    def request_stop(signum: int, frame: FrameType | None) -> None:
        # stop() joins the server thread; doing that inside a signal handler could deadlock.
        threading.Thread(target=emulator.stop, name="edge-emulator-stop", daemon=True).start()

    # Handlers go in before the listening line so a SIGTERM sent right after it is never fatal.
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            emulator.start()
        except OSError as exc:
            print(json.dumps({"event": "emulator_bind_failed", "error": str(exc)}), file=sys.stderr)
            return 69
        listening = {"event": "emulator_listening", "url": emulator.url, "port": emulator.port}
        print(json.dumps(listening), flush=True)
        emulator.serve_forever()
    finally:
        emulator.stop()
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
