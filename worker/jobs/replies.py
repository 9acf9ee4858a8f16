"""The reply maps of the contract, built from what the edge said about a job (pure functions, no I/O)."""

from __future__ import annotations

from typing import Any

from worker.edge import EdgeJob, EdgeResults
from worker.errors import InvalidRequest, JobError, JobTimeout
from worker.messages import JobRequest, ReplyRoute, empty_reply, now_rfc3339


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
        reply["job_identifier"] = job_id  # a resumed job reached the edge even if we hold no receipt
    else:
        reply = job_reply(job, None, request, route, final=True)
        reply["status"] = status
    reply["error"] = error.as_reply_error()
    return reply


def rejected_reply(route: ReplyRoute, error: InvalidRequest) -> dict[str, Any]:
    """The final reply to a request that could not be decoded."""
    reply = empty_reply(route, status="REJECTED", final=True)
    reply["error"] = error.as_reply_error()
    return reply
