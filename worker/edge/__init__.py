"""The edge server, transport-neutral: `EdgeClient` (the protocol the job lifecycle calls), its two
transports (`HttpEdgeClient` for the HTTP/JSON gateway, `GrpcEdgeClient` for the gRPC API the SDK speaks)
and `make_edge_client`, which picks one from edge.url. Knows nothing of RabbitMQ."""

from worker.edge.base import EdgeAnswerError
from worker.edge.client import EdgeClient, make_edge_client
from worker.edge.http import EdgeHTTPError, HttpEdgeClient
from worker.edge.model import (
    TERMINAL_STATUSES,
    EdgeJob,
    EdgeResults,
    Features,
    JobSummary,
    Submission,
    normalize_status,
    parse_size,
)

__all__ = [
    "TERMINAL_STATUSES",
    "EdgeAnswerError",
    "EdgeClient",
    "EdgeHTTPError",
    "EdgeJob",
    "EdgeResults",
    "Features",
    "HttpEdgeClient",
    "JobSummary",
    "Submission",
    "make_edge_client",
    "normalize_status",
    "parse_size",
]
