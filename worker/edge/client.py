"""The edge as the job lifecycle sees it, whatever the transport, and the factory that picks one by URL."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Protocol

from worker.config import GRPC_EXTRA_HINT, EdgeConfig
from worker.edge.base import OnCall
from worker.edge.model import EdgeJob, EdgeResults, Features, JobSummary
from worker.errors import ConfigError


class EdgeClient(Protocol):
    """One edge server, thread-safe, used from the worker's job threads. Knows nothing of RabbitMQ.

    Every call raises the contract's errors (worker.errors): ModelNotFound, EdgeRejected (PAYLOAD_TOO_LARGE
    among them), JobNotFound, or EdgeUnavailable after its retries (transient; maybe_sent when a request may
    have reached the edge unanswered). `traceparent` (and `tracestate` with it), when given, travel as the
    W3C headers (HTTP) or metadata (gRPC) of that call.
    """

    def features(self) -> Features:
        """The edge's chunking limits, read once."""
        ...

    def answers(self) -> tuple[bool, str]:
        """One unretried probe: (whether the edge answers, why not)."""
        ...

    def last_sent_at(self) -> float | None:
        """When this thread's last request started (time.monotonic())."""
        ...

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
        """A text or embedded job in one submission."""
        ...

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
        """An open job, its inputs appended in chunks, then closed."""
        ...

    def get_job(
        self,
        job_id: str,
        *,
        deadline: float | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> EdgeJob:
        """The job's status; JobNotFound when the edge does not know it."""
        ...

    def get_results(
        self,
        job_id: str,
        *,
        deadline: float | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> EdgeResults | None:
        """The job's results, None while not ready."""
        ...

    def cancel_job(
        self, job_id: str, *, traceparent: str | None = None, tracestate: str | None = None
    ) -> EdgeJob | None:
        """Cancel; None when the edge no longer knows the job."""
        ...

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
        """Every job the edge lists (of one model, created between start and end, RFC 3339, when given)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def make_edge_client(edge: EdgeConfig, *, on_call: OnCall | None = None) -> EdgeClient:
    """The client for edge.url: HttpEdgeClient for http(s)://, GrpcEdgeClient for grpc://host:port."""
    scheme = urllib.parse.urlsplit(edge.url).scheme
    if scheme == "grpc":
        try:
            from worker.edge.grpc import GrpcEdgeClient  # noqa: PLC0415 -- grpcio is an optional extra
        except ImportError as exc:
            raise ConfigError(
                f"edge.url {edge.url!r} speaks gRPC, which needs the grpc extra ({exc.name or exc} is missing): "
                f"{GRPC_EXTRA_HINT}"
            ) from None
        return GrpcEdgeClient(
            target=grpc_target(edge.url),
            request_timeout_s=edge.request_timeout,
            max_attempts=edge.max_attempts,
            max_message_bytes=edge.grpc_max_message_bytes,
            api_key=edge.api_key,
            on_call=on_call,
        )
    from worker.edge.http import HttpEdgeClient  # noqa: PLC0415 -- a gRPC worker does not load urllib3's pool code

    return HttpEdgeClient(
        base_url=edge.url,
        request_timeout_s=edge.request_timeout,
        max_attempts=edge.max_attempts,
        api_key=edge.api_key,
        chunk_encoding=edge.chunk_encoding,
        on_call=on_call,
    )


def grpc_target(url: str) -> str:
    """grpc://host:port as the host:port a gRPC channel takes (an IPv6 host keeps its brackets)."""
    return urllib.parse.urlsplit(url).netloc.rpartition("@")[2]
