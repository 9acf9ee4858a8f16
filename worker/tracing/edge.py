"""The edge client, traced: each call of the job lifecycle's edge client carries the running job's trace."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from worker.edge import EdgeClient, EdgeJob, EdgeResults, Features, JobSummary
from worker.tracing.job import current_job
from worker.tracing.otel import EdgeCall, describer


class TracedEdgeClient:
    """An EdgeClient whose calls carry the current job's trace (and make its CLIENT spans); else unchanged.

    Each call carries a child traceparent and the job's tracestate; a call given its own `traceparent` keeps
    it. A chunked submission is one call (and one span) for its whole upload, named after the request that
    opens the job.
    """

    def __init__(self, inner: EdgeClient) -> None:
        self.inner = inner
        self._describe = describer(inner)

    def features(self) -> Features:
        return self.inner.features()

    def answers(self) -> tuple[bool, str]:
        return self.inner.answers()

    def last_sent_at(self) -> float | None:
        return self.inner.last_sent_at()

    def close(self) -> None:
        self.inner.close()

    @contextlib.contextmanager
    def _call(
        self, call: str, job_id: str | None, traceparent: str | None, tracestate: str | None
    ) -> Iterator[tuple[str | None, str | None, EdgeCall | None]]:
        """What the call carries (the caller's own traceparent, else a child of the running job's), and the
        job's record of the call when there is one."""
        job = current_job()
        if traceparent is not None or job is None or job.context is None:
            yield traceparent, tracestate, None
            return
        if not job.recording:  # no span to describe: only the child traceparent travels
            yield job.context.child().traceparent, job.context.tracestate, None
            return
        name, attributes = self._describe(call, job_id)
        with job.edge_call(name, attributes) as edge_call:
            yield edge_call.traceparent, job.context.tracestate, edge_call

    def submit_job(
        self,
        *,
        model_id: str,
        version: str,
        sources: Mapping[str, Mapping[str, bytes | str]],
        input_type: str,
        explain: bool,
        deadline: float | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> EdgeJob:
        with self._call("submit", None, traceparent, tracestate) as (carried, state, _):
            return self.inner.submit_job(
                model_id=model_id,
                version=version,
                sources=sources,
                input_type=input_type,
                explain=explain,
                deadline=deadline,
                traceparent=carried,
                tracestate=state,
            )

    def submit_chunked(
        self,
        *,
        model_id: str,
        version: str,
        sources: Mapping[str, Mapping[str, bytes | str]],
        explain: bool,
        deadline: float | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> EdgeJob:
        with self._call("submit", None, traceparent, tracestate) as (carried, state, _):
            return self.inner.submit_chunked(
                model_id=model_id,
                version=version,
                sources=sources,
                explain=explain,
                deadline=deadline,
                traceparent=carried,
                tracestate=state,
            )

    def get_job(
        self,
        job_id: str,
        *,
        deadline: float | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> EdgeJob:
        with self._call("status", job_id, traceparent, tracestate) as (carried, state, _):
            return self.inner.get_job(job_id, deadline=deadline, traceparent=carried, tracestate=state)

    def get_results(
        self,
        job_id: str,
        *,
        deadline: float | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> EdgeResults | None:
        with self._call("results", job_id, traceparent, tracestate) as (carried, state, edge_call):
            results = self.inner.get_results(job_id, deadline=deadline, traceparent=carried, tracestate=state)
            if results is None and edge_call is not None:
                edge_call.status_code = "NOT_FOUND"  # not ready yet: the edge said so without an error
            return results

    def cancel_job(
        self, job_id: str, *, traceparent: str | None = None, tracestate: str | None = None
    ) -> EdgeJob | None:
        with self._call("cancel", job_id, traceparent, tracestate) as (carried, state, edge_call):
            canceled = self.inner.cancel_job(job_id, traceparent=carried, tracestate=state)
            if canceled is None and edge_call is not None:
                edge_call.status_code = "NOT_FOUND"  # the edge no longer knows the job
            return canceled

    def list_jobs(
        self,
        *,
        deadline: float | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
        model_id: str = "",
        start: str = "",
        end: str = "",
    ) -> list[JobSummary]:
        with self._call("list", None, traceparent, tracestate) as (carried, state, _):
            return self.inner.list_jobs(
                deadline=deadline, traceparent=carried, tracestate=state, model_id=model_id, start=start, end=end
            )


def traced_edge(edge: EdgeClient) -> EdgeClient:
    """The edge client the job lifecycle uses: its calls carry the running job's trace."""
    return edge if isinstance(edge, TracedEdgeClient) else TracedEdgeClient(edge)
