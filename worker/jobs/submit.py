"""How a request reaches the edge: embedded or chunked, the edge's limits checked first, and the journal's
mark around the moment the edge may know a job the journal does not."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from worker.edge import EdgeClient, EdgeJob, Features
from worker.errors import EdgeRejected, EdgeUnavailable
from worker.jobs.adopt import SubmitWindows, shape_of
from worker.jobs.gate import EdgeGate
from worker.journal import Journal
from worker.messages import JobRequest

if TYPE_CHECKING:
    from worker.jobs.settings import JobSettings


class Submitter:
    """Submits one request's job, through the gate (so an outage waits up to the job's deadline)."""

    def __init__(self, *, edge: EdgeClient, gate: EdgeGate, journal: Journal | None, settings: JobSettings) -> None:
        self._edge = edge
        self._gate = gate
        self._journal = journal
        self._settings = settings
        self._windows = SubmitWindows()

    def submit(self, request: JobRequest, deadline: float, key: str | None, bound: Any) -> EdgeJob:
        """Submit, with the journal marking the moment the edge may know a job the journal does not.

        From that mark until the job's id is journaled, no other submission of the same shape goes out from this
        process (jobs.adopt: what lets the next process find the job if this one dies in between).
        """
        with self._windows.window(shape_of(request)) as hold:
            job, answered_once = self._submit(request, deadline, key, bound)
            if key is not None and self._journal is not None:
                self._journal.record_job(key, job.job_identifier)
                hold.clean = answered_once  # the edge holds this one job for it, and the journal names it
            return job

    def _submit(self, request: JobRequest, deadline: float, key: str | None, bound: Any) -> tuple[EdgeJob, bool]:
        """The job, and whether it came from the only attempt that may have reached the edge."""
        unanswered = False
        attempts = 0

        def attempt() -> EdgeJob:
            nonlocal unanswered, attempts
            attempts += 1
            try:
                job = self._send(request, deadline)
            except EdgeUnavailable as exc:
                unanswered = unanswered or exc.maybe_sent
                raise
            unanswered = unanswered or job.maybe_duplicated
            return job

        if key is not None and self._journal is not None:
            self._journal.record_submitting(key)
        try:
            job = self._gate.call(attempt, deadline, "submit", bound)
        except BaseException:
            if key is not None and self._journal is not None:
                self._journal.record_submitting(key, False)
            raise
        if unanswered:
            bound.warning(
                "edge_job_maybe_duplicated",
                reason="a submission reached the edge but its answer was lost (timeout or dropped connection); "
                "it was submitted again, and the edge may hold a job no reply will name",
                job_identifier=job.job_identifier,
            )
        # A chunked upload may have cancelled and restarted an open job inside the client: never "once".
        return job, attempts == 1 and not unanswered and not self._is_chunked(request)

    def _is_chunked(self, request: JobRequest) -> bool:
        return self._settings.upload == "chunked" or (
            self._settings.upload == "auto"
            and request.input_type == "embedded"
            and sum(sum(sizes.values()) for sizes in request.input_sizes().values()) > self._settings.embed_limit
        )

    def _send(self, request: JobRequest, deadline: float) -> EdgeJob:
        if self._is_chunked(request):
            # The upload reads the edge's features anyway (for the chunk size): its limits are checked first, so
            # that a request the edge would refuse halfway through is refused before any chunk is sent.
            _check_edge_limits(request, self._edge.features())
            return self._edge.submit_chunked(
                model_id=request.model_id,
                version=request.version,
                sources=request.sources,
                explain=request.explain,
                deadline=deadline,
            )
        return self._edge.submit_job(
            model_id=request.model_id,
            version=request.version,
            sources=request.sources,
            input_type=request.input_type,
            explain=request.explain,
            deadline=deadline,
        )


def _check_edge_limits(request: JobRequest, features: Features) -> None:
    """Refuse, naming the limit, a request the edge's maximumInputsPerJob or maximumInputChunks would refuse."""
    if features.max_inputs is not None and len(request.sources) > features.max_inputs:
        raise EdgeRejected(
            f"the request has {len(request.sources)} sources; the edge takes at most {features.max_inputs} "
            "per job (maximumInputsPerJob)"
        )
    if features.max_chunks is None:
        return
    for source, sizes in request.input_sizes().items():
        for name, size in sizes.items():
            chunks = -(-size // features.chunk_bytes)
            if chunks > features.max_chunks:
                raise EdgeRejected(
                    f"input {source}/{name} ({size} bytes) needs {chunks} chunks of {features.chunk_bytes} bytes; "
                    f"the edge takes at most {features.max_chunks} per input (maximumInputChunks)",
                    code="PAYLOAD_TOO_LARGE",
                )
