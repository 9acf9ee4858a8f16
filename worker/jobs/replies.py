"""The reply maps of the contract, built from what the edge said about a job (pure functions, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack

from worker.edge import EdgeJob, EdgeResults
from worker.errors import JobError, JobTimeout
from worker.messages import JobRequest, ReplyRoute, empty_reply, encode_reply, now_rfc3339


def job_reply(
    job: EdgeJob,
    results: EdgeResults | None,
    request: JobRequest,
    route: ReplyRoute,
    *,
    final: bool,
) -> dict[str, Any]:
    """The reply for an edge job: the SUBMITTED update (final=False), or the final reply with its results."""
    model = dict(job.model)
    model["identifier"] = model.get("identifier") or request.model_id
    model["version"] = model.get("version") or request.version
    model.setdefault("name", None)
    status = job.status if final else "SUBMITTED"
    reply: dict[str, Any] = {
        "status": status,
        "final": final,
        "job_identifier": job.job_identifier,
        "request_id": route.request_id,
        "correlation_id": route.correlation_id,
        "model": model,
        "explain": job.explain or request.explain,
        "total": job.total or len(request.sources),
        "pending": job.pending,
        "completed": job.completed,
        "failed": job.failed,
        "job_inputs": job.job_inputs or list(request.sources),
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "submitted_at": job.submitted_at,
        "finished_at": (job.updated_at or now_rfc3339()) if final else None,
        "elapsed_ms": job.elapsed_ms or (results.elapsed_ms if results else 0),
    }
    if not final:
        return reply
    if results is not None:
        if request.want_results:
            reply["results"] = results.results
        if results.failures:
            reply["failures"] = results.failures
    if job.status == "FAILED":
        reply["error"] = {
            "code": "JOB_FAILED",
            "message": "the edge ran the job and every input failed",
            "retryable": False,
        }
    elif job.status == "CANCELED":
        reply["error"] = {"code": "JOB_CANCELED", "message": "the job was cancelled at the edge", "retryable": True}
    elif job.status in {"TIMEOUT", "ERROR"}:
        reply["error"] = {
            "code": job.status if job.status == "TIMEOUT" else "ERROR",
            "message": f"the edge ended the job with status {job.status}",
            "retryable": True,
        }
    return reply


def final_reply(job: EdgeJob, results: EdgeResults | None, request: JobRequest, route: ReplyRoute) -> dict[str, Any]:
    """The final reply of a job the edge ended; a completed job whose results were wanted but not found says {}."""
    reply = job_reply(job, results, request, route, final=True)
    if request.want_results and results is None and job.status == "COMPLETE":
        reply["results"] = {}
    return reply


def error_reply(
    route: ReplyRoute, request: JobRequest, job: EdgeJob | None, error: JobError, *, job_id: str | None
) -> dict[str, Any]:
    """The final reply of a job that ended in an error of ours (TIMEOUT, or ERROR with the error's code)."""
    status = "TIMEOUT" if isinstance(error, JobTimeout) else "ERROR"
    if job is None:
        reply = empty_reply(route, status=status, final=True)
        reply["model"] = {"identifier": request.model_id, "version": request.version, "name": None}
        reply["explain"] = request.explain
        reply["total"] = len(request.sources)
        reply["job_inputs"] = list(request.sources)
        # A resumed job reached the edge even if we hold no receipt; an upload refused after its open job was made
        # names that job.
        reply["job_identifier"] = job_id or error.job_identifier
    else:
        reply = job_reply(job, None, request, route, final=True)
        reply["status"] = status
    reply["error"] = error.as_reply_error()
    return reply


# The reply fields a REPLY_TOO_LARGE reply keeps (contract §2: status, counts, job_identifier, elapsed_ms; not the
# results, not the failures, which are as large as the edge makes them).
_KEPT_WHEN_TOO_LARGE = (
    "final",
    "job_identifier",
    "request_id",
    "correlation_id",
    "model",
    "explain",
    "total",
    "pending",
    "completed",
    "failed",
    "created_at",
    "updated_at",
    "submitted_at",
    "finished_at",
    "elapsed_ms",
)


def too_large_reply(reply: Mapping[str, Any], *, size_bytes: int, limit_bytes: int) -> dict[str, Any]:
    """The final ERROR/REPLY_TOO_LARGE reply that replaces `reply` (encoded: size_bytes) over limit_bytes.

    Used twice: before a final reply is journaled, against amqp.max_message_bytes, and by the publish path when
    the broker refuses a reply for its size (its max_message_size; then limit_bytes is what the broker said, or
    amqp.max_message_bytes when it said no figure). Keeps the job's identity, counts and timings; drops results,
    failures and job_inputs (source names are a producer's own keys: a map of a million sources is large too).
    """
    small: dict[str, Any] = {key: reply.get(key) for key in _KEPT_WHEN_TOO_LARGE}
    small["final"] = True
    small["status"] = "ERROR"
    small["job_inputs"] = []
    model = reply.get("model")
    if isinstance(model, Mapping):
        small["model"] = {k: model.get(k) for k in ("identifier", "version", "name")}
    else:
        small["model"] = {"identifier": None, "version": None, "name": None}
    was = reply.get("status")
    small["error"] = {
        "code": "REPLY_TOO_LARGE",
        "message": f"the final reply ({was}) with its results is {size_bytes} bytes; replies may be at most "
        f"{limit_bytes} bytes (amqp.max_message_bytes, or the broker's max_message_size): sent without results",
        "retryable": False,
    }
    return small


def rejected_reply(route: ReplyRoute, error: JobError) -> dict[str, Any]:
    """The final reply to a request that could not be decoded, or may not be answered where it asked."""
    reply = empty_reply(route, status="REJECTED", final=True)
    reply["error"] = error.as_reply_error()
    return reply


def too_large_encoded(encoded: bytes, *, limit_bytes: int) -> bytes:
    """too_large_reply for an already encoded final reply (an Outcome's reply bytes), encoded again."""
    reply = msgpack.unpackb(encoded, raw=False)
    if not isinstance(reply, dict):
        reply = {}
    return encode_reply(too_large_reply(reply, size_bytes=len(encoded), limit_bytes=limit_bytes))
