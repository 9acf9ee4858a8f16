"""The producer API of contract section 8: submit job requests to edge-worker the way the edge SDK submits jobs.

with EdgeWorkerClient("amqp://guest:guest@127.0.0.1:5672/%2F") as client:
    job = client.jobs.submit_embedded("sha256", "1.0.0", {"cam-1": {"image": data}})
    final = client.jobs.block_until_complete(job, timeout=30).raise_for_error()
    print(client.results.get_results(final))
"""

from worker.client.api import DEFAULT_QUEUE, DEFAULT_URL, EdgeWorkerClient, Jobs, Results
from worker.client.job import (
    BrokerUnreachable,
    ClientClosed,
    ClientError,
    EdgeError,
    Job,
    JobError,
    JobFailed,
    JobRejected,
    JobTimeout,
    PublishError,
    ReplyError,
    ReplyTimeout,
    RequestUnroutable,
    UnknownJob,
)

__all__ = [
    "DEFAULT_QUEUE",
    "DEFAULT_URL",
    "BrokerUnreachable",
    "ClientClosed",
    "ClientError",
    "EdgeError",
    "EdgeWorkerClient",
    "Job",
    "JobError",
    "JobFailed",
    "JobRejected",
    "JobTimeout",
    "Jobs",
    "PublishError",
    "ReplyError",
    "ReplyTimeout",
    "RequestUnroutable",
    "Results",
    "UnknownJob",
]
