"""The edge's answers in their proto3 JSON form, as grpc-gateway prints them (lowerCamelCase keys, RFC 3339
timestamps, enums by name). The HTTP face sends these as they are; the gRPC face parses them into the
generated messages, so both faces answer the same thing."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from worker.emulator.job import Job

PROTOBUF_STRUCT_TYPE = "type.googleapis.com/google.protobuf.Struct"


class Clock:
    """Monotonic time for scheduling, anchored once to the wall clock for timestamps."""

    def __init__(self) -> None:
        self.mono0 = time.monotonic()
        self.wall0 = time.time()

    def wall(self, moment: float) -> datetime:
        return datetime.fromtimestamp(self.wall0 + (moment - self.mono0), UTC)

    def timestamp(self, moment: float) -> str:
        stamp = self.wall(moment)
        return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def _elapsed_ms(job: Job, now: float) -> int:
    if not job.scheduled:
        return 0
    return max(0, int((job.finished_at(now) - job.submitted_at) * 1000))


def _model(job: Job) -> dict[str, Any]:
    return {"identifier": job.identifier, "version": job.version, "name": f"Emulated {job.identifier}"}


def receipt(job: Job, now: float, clock: Clock) -> dict[str, Any]:
    """A JobSubmissionReceipt (status is the JobStatus enum)."""
    pending, completed, failed = job.counts(now)
    return {
        "jobIdentifier": job.id,
        "model": _model(job),
        "accessKey": "",
        "totalInputs": len(job.inputs),
        "inputByteAmount": job.input_bytes(),
        "jobInputs": {"identifier": list(job.inputs)},
        "submittedAt": clock.timestamp(job.submitted_at),
        "status": "SUBMITTED" if job.scheduled else "OPEN",
        "details": {
            "accountIdentifier": "",
            "createdAt": clock.timestamp(job.created_at),
            "updatedAt": clock.timestamp(job.updated_at(now)),
            "total": len(job.inputs),
            "pending": pending,
            "completed": completed,
            "failed": failed,
            "elapsedTime": _elapsed_ms(job, now),
        },
        "explain": job.explain,
    }


def details(job: Job, now: float, clock: Clock) -> dict[str, Any]:
    """A JobDetails (status is a plain string)."""
    pending, completed, failed = job.counts(now)
    return {
        "jobIdentifier": job.id,
        "model": _model(job),
        "status": job.status(now),
        "createdAt": clock.timestamp(job.created_at),
        "updatedAt": clock.timestamp(job.updated_at(now)),
        "submittedAt": clock.timestamp(job.submitted_at),
        "total": len(job.inputs),
        "pending": pending,
        "completed": completed,
        "failed": failed,
        "elapsedTime": _elapsed_ms(job, now),
        "jobInputs": [{"identifier": source} for source in job.inputs],
    }


def summary(job: Job, now: float) -> dict[str, Any]:
    """A JobSummary, one entry of a job listing."""
    return {"jobIdentifier": job.id, "status": job.status(now), "model": _model(job)}


def results(job: Job, now: float, clock: Clock) -> dict[str, Any]:
    """A Results; a failure is an Any holding a Struct {"error", "source"}."""
    status = job.status(now)
    ran_to_end = status in ("COMPLETE", "FAILED")
    outputs: dict[str, Any] = {}
    failures: dict[str, Any] = {}
    if ran_to_end:
        for source in job.inputs:
            if source in job.failed_sources:
                failures[source] = {
                    "@type": PROTOBUF_STRUCT_TYPE,
                    "error": "input starts with FAIL (injected model failure)",
                    "source": source,
                }
            else:
                outputs[source] = _input_result(job, source, clock)
    return {
        "jobIdentifier": job.id,
        "accountIdentifier": "",
        "total": len(job.inputs),
        "completed": len(outputs),
        "failed": len(failures),
        "finished": status in ("COMPLETE", "FAILED", "CANCELED"),
        "explained": job.explain,
        "submittedAt": clock.timestamp(job.submitted_at),
        "elapsedTime": _elapsed_ms(job, now),
        "averageModelLatency": job.duration_s * 1000.0 if ran_to_end else 0.0,
        "results": outputs,
        "failures": failures,
    }


def _input_result(job: Job, source: str, clock: Clock) -> dict[str, Any]:
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
        "queueTime": round((job.start - job.submitted_at) * 1000.0),  # uint32 milliseconds
        "startTime": clock.timestamp(job.start),
        "endTime": clock.timestamp(job.end),
        "results.json": output,
    }
