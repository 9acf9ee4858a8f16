"""The emulated edge itself, behind both faces: one set of jobs, the slots they run in, the fake model,
fault injection and statistics. Operations take and give the API's messages in their proto3 JSON form.

Jobs run in virtual time, with no scheduler thread and no sleeping: every call first advances the
schedule to `time.monotonic()` (waiting jobs take the slots freed since the last call, at the moment each
was freed), then derives statuses from the clock. Inputs are never kept: each one is reduced to a sha256
and a size, which the fake model echoes back so tests can prove the bytes arrived intact.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from worker.emulator import answers
from worker.emulator.config import EmulatorConfig, split_model
from worker.emulator.errors import FAILED_PRECONDITION, NOT_FOUND, EdgeError, invalid
from worker.emulator.job import TERMINAL, InputDigest, Job, Submission
from worker.emulator.submission import MAXIMUM_INPUT_CHUNKS, MAXIMUM_INPUTS_PER_JOB, JobFilter

CALL_NAMES = ("submit", "status", "cancel", "results", "features", "chunk", "close", "list")
FACES = ("http", "grpc")
_FAIL_MARKER = b"FAIL"
_SLEEP_MODEL = "sleep"
_SLEEP_INPUT = "seconds"


class EdgeState:
    """Jobs and their schedule; every public method is one edge operation and takes the lock."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.models = frozenset(split_model(model) for model in config.models)
        self._lock = threading.Lock()
        self._random = random.Random(config.seed)
        self._fail_rate = config.fail_rate
        self._latency_s = config.latency_s
        self._clock = answers.Clock()
        # Jobs the edge knows, by id; forget_all_jobs() empties it.
        self._jobs: dict[str, Job] = {}
        # A heap of (free-at, tie-break, job holding the slot or None): with a capacity, one entry per
        # slot plus stale entries of jobs cut short (their slot was pushed again, free at the cut);
        # unlimited, one entry per job until it ends.
        self._slots: list[tuple[float, int, Job | None]] = []
        self._tie_break = itertools.count()
        # Jobs waiting for a slot, in FIFO order; canceled ones are skipped when they reach the front.
        self._queue: deque[Job] = deque()
        self._reset_slots(self._clock.mono0)
        self.reset_stats()

    # ----- the API ---------------------------------------------------------------------------------

    def features(self) -> dict[str, Any]:
        return {
            "inputChunkMaximumSize": self.config.chunk_size,
            "maximumInputChunks": MAXIMUM_INPUT_CHUNKS,
            "maximumInputsPerJob": MAXIMUM_INPUTS_PER_JOB,
        }

    def submit(self, submission: Submission) -> dict[str, Any]:
        with self._lock:
            now = self._advance()
            job = Job(submission, now)
            self._jobs[job.id] = job
            self._stats_jobs.append(job)
            self._jobs_submitted += 1
            if submission.input_type != "open":
                self._schedule(job, now)
            return answers.receipt(job, now, self._clock)

    def status(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            now = self._advance()
            return answers.details(self._find(job_id), now, self._clock)

    def cancel(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            now = self._advance()
            job = self._find(job_id)
            status = job.status(now)
            if status in TERMINAL:
                return answers.details(job, now, self._clock)
            job.frozen_status = "CANCELED"
            self._jobs_canceled += 1
            if status == "IN_PROGRESS":
                self._release_slot(job, now)
            elif status == "SUBMITTED":
                job.halted_at = now  # stops its clock; _advance() skips it when it reaches the front
            return answers.details(job, now, self._clock)

    def append(self, job_id: str, source: str, input_name: str, data: bytes) -> dict[str, Any]:
        """AddInputToJob: one chunk of raw bytes, appended to the named input of an OPEN job."""
        if len(data) > self.config.chunk_size_bytes:
            raise invalid(f"chunk of {len(data)} bytes is larger than the maximum of {self.config.chunk_size_bytes}")
        with self._lock:
            job = self._open_job(job_id, self._advance())
            values = job.inputs.get(source)
            if values is None:
                if len(job.inputs) >= MAXIMUM_INPUTS_PER_JOB:
                    raise invalid(f"job {job_id} already has {MAXIMUM_INPUTS_PER_JOB} inputs")
                values = job.inputs[source] = {}
            digest = values.get(input_name)
            if digest is None:
                digest = values[input_name] = InputDigest()
            if digest.chunks >= MAXIMUM_INPUT_CHUNKS:
                raise invalid(f"input {source}/{input_name} already has {MAXIMUM_INPUT_CHUNKS} chunks")
            digest.update(data)
            self._chunks_appended += 1
            return {}

    def close(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            now = self._advance()
            job = self._open_job(job_id, now)
            if not job.inputs:
                raise EdgeError(FAILED_PRECONDITION, f"job {job_id} has no inputs to close")
            self._jobs_closed += 1
            self._schedule(job, now)
            return answers.receipt(job, now, self._clock)

    def results(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            now = self._advance()
            return answers.results(self._find(job_id), now, self._clock)

    def list_jobs(self, wanted: JobFilter) -> list[dict[str, Any]]:
        """JobSummary entries of the jobs the edge knows that match, oldest first."""
        with self._lock:
            now = self._advance()
            return [answers.summary(job, now) for job in self._jobs.values() if self._matches(job, wanted, now)]

    def _matches(self, job: Job, wanted: JobFilter, now: float) -> bool:
        created = self._clock.wall(job.created_at)
        return (
            (not wanted.model or wanted.model == job.identifier)
            and (not wanted.status or wanted.status == job.status(now))
            and (wanted.start_date is None or created >= wanted.start_date)
            and (wanted.end_date is None or created <= wanted.end_date)
        )

    # ----- faults and statistics -------------------------------------------------------------------

    def draw_injected_failure(self) -> bool:
        with self._lock:
            if self._fail_rate <= 0.0 or self._random.random() >= self._fail_rate:
                return False
            self._failed_calls_injected += 1
            return True

    def count_call(self, name: str, face: str) -> None:
        with self._lock:
            self._calls[name] += 1
            self._calls_by_face[face] += 1

    def record_trace(self, face: str, call: str, traceparent: str | None, tracestate: str | None) -> None:
        """The W3C trace context an API call carried (None without), kept for stats() (the latest 1000)."""
        with self._lock:
            self._traces.append({"face": face, "call": call, "traceparent": traceparent, "tracestate": tracestate})
            del self._traces[:-1000]

    def count_too_large(self) -> None:
        with self._lock:
            self._rejected_too_large += 1

    def count_refused_chunk(self) -> None:
        with self._lock:
            self._chunks_refused += 1

    def set_faults(
        self, *, fail_rate: float | None = None, forget_jobs: bool | None = None, latency_s: float | None = None
    ) -> dict[str, float]:
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
        with self._lock:
            return {"fail_rate": self._fail_rate, "latency_s": self._latency_s}

    def forget_all_jobs(self) -> None:
        """Forget every job as a restarted edge would: later calls about them answer NOT_FOUND."""
        with self._lock:
            now = self._advance()
            for job in self._jobs.values():
                status = job.status(now)
                if status not in TERMINAL:
                    job.frozen_status = status
                    job.halted_at = now
                job.forgotten = True
            self._jobs.clear()
            self._reset_slots(now)

    def reset_stats(self) -> None:
        """Zero the counters and start a new list of jobs; peak_running then covers only jobs created after."""
        with self._lock:
            self._jobs_submitted = 0
            self._jobs_closed = 0
            self._jobs_canceled = 0
            self._calls = dict.fromkeys(CALL_NAMES, 0)
            self._calls_by_face = dict.fromkeys(FACES, 0)
            self._failed_calls_injected = 0
            self._rejected_too_large = 0
            self._chunks_appended = 0
            self._chunks_refused = 0
            self._stats_jobs: list[Job] = []
            self._traces: list[dict[str, str | None]] = []

    def stats(self) -> dict[str, Any]:
        """Counters since the last reset, as a JSON-able dict."""
        with self._lock:
            now = self._advance()
            return {
                "jobs_submitted": self._jobs_submitted,
                "jobs_closed": self._jobs_closed,
                "jobs_canceled": self._jobs_canceled,
                "calls": dict(self._calls),
                "calls_by_face": dict(self._calls_by_face),
                "failed_calls_injected": self._failed_calls_injected,
                "rejected_too_large": self._rejected_too_large,
                "chunks_appended": self._chunks_appended,
                "chunks_refused": self._chunks_refused,
                "peak_running": _peak_overlap(job.interval(now) for job in self._stats_jobs),
                "running_now": sum(1 for _, _, job in self._slots if job is not None and job.is_running(now)),
                "waiting_now": sum(1 for job in self._queue if job.frozen_status is None),
                "fail_rate": self._fail_rate,
                "latency_s": self._latency_s,
                "jobs": [_stats_entry(job, now) for job in self._stats_jobs],
                "traces": [dict(entry) for entry in self._traces],
            }

    # ----- scheduling ------------------------------------------------------------------------------

    def _find(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise EdgeError(NOT_FOUND, f"job {job_id} not found")
        return job

    def _open_job(self, job_id: str, now: float) -> Job:
        job = self._find(job_id)
        status = job.status(now)
        if status != "OPEN":
            raise EdgeError(FAILED_PRECONDITION, f"job {job_id} is {status}, not OPEN")
        return job

    def _reset_slots(self, now: float) -> None:
        self._slots = [(now, next(self._tie_break), None) for _ in range(self.config.capacity)]
        self._queue.clear()

    def _advance(self) -> float:
        """Bring the schedule up to now: hand every slot freed so far to the next waiting job."""
        now = time.monotonic()
        slots = self._slots
        if self.config.capacity == 0:
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

    def _schedule(self, job: Job, now: float) -> None:
        """Queue a job with all its inputs; it starts at once if a slot is free."""
        job.scheduled = True
        job.submitted_at = now
        job.failed_sources = frozenset(
            source
            for source, values in job.inputs.items()
            if any(digest.head.startswith(_FAIL_MARKER) for digest in values.values())
        )
        job.duration_s = self._duration_for(job)
        if self.config.capacity == 0:
            job.start, job.end = now, now + job.duration_s
            heapq.heappush(self._slots, (job.end, next(self._tie_break), job))
            return
        self._queue.append(job)
        self._advance()

    def _release_slot(self, job: Job, now: float) -> None:
        """Cut a running job short; with a capacity its slot is free from now on."""
        job.halted_at = now
        if self.config.capacity > 0:
            heapq.heappush(self._slots, (now, next(self._tie_break), None))
            self._advance()

    def _duration_for(self, job: Job) -> float:
        """The fake model: the sleep model runs for its "seconds" input, every other for the latency."""
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


def _stats_entry(job: Job, now: float) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": job.id,
        "model": job.identifier,
        "version": job.version,
        "status": job.status(now),
        "explain": job.explain,
        "input_type": job.input_type,
        "inputs": {
            source: {name: digest.as_json() for name, digest in values.items()} for source, values in job.inputs.items()
        },
    }
    if job.forgotten:
        entry["forgotten"] = True
    return entry


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
