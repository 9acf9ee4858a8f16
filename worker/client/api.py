"""`EdgeWorkerClient`: the edge SDK's `EdgeClient` shape (`client.jobs`, `client.results`) over the queue."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import msgpack

from worker.broker import connection_parameters
from worker.client.connection import Link
from worker.client.job import ClientError, Job, freeze, thaw
from worker.client.replies import DEFAULT_MAX_UNCLAIMED, Replies
from worker.config import AmqpConfig, broker_urls, describe_url

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_QUEUE = "edge.jobs"


def _sources(sources: Mapping[str, Any], *, text: bool) -> dict[str, dict[str, bytes | str]]:
    """Check and copy `sources`; a one-level map means {"job": sources}, as in the SDK."""
    if not isinstance(sources, Mapping) or not sources:
        raise TypeError("sources: expected a non-empty map of source name -> {input name: data}")
    if not any(isinstance(v, Mapping) for v in sources.values()):
        sources = {"job": sources}
    out: dict[str, dict[str, bytes | str]] = {}
    for source, inputs in sources.items():
        if not isinstance(source, str) or not isinstance(inputs, Mapping):
            raise TypeError(f"sources[{source!r}]: expected a map of input name -> data")
        item: dict[str, bytes | str] = {}
        for key, value in inputs.items():
            if not isinstance(key, str):
                raise TypeError(f"sources[{source!r}][{key!r}]: input names are str")
            if text:
                if not isinstance(value, str):
                    raise TypeError(f"sources[{source!r}][{key!r}]: submit_text takes str, got {type(value).__name__}")
                item[key] = value
            elif isinstance(value, bytes | bytearray | memoryview):
                item[key] = bytes(value)
            elif isinstance(value, str):
                item[key] = value.encode("utf-8")  # an embedded job: its str inputs travel as their UTF-8 bytes
            else:
                raise TypeError(f"sources[{source!r}][{key!r}]: expected bytes or str, got {type(value).__name__}")
        out[source] = item
    return out


class Jobs:
    """`client.jobs`: submit requests and wait for their final replies."""

    def __init__(self, client: EdgeWorkerClient) -> None:
        self._client = client

    def submit_embedded(
        self,
        identifier: str,
        version: str,
        sources: Mapping[str, Any],
        explain: bool = False,
        *,
        timeout: float | None = None,
        message_id: str | None = None,
        request_id: str | None = None,
        updates: bool = False,
        reply_to: str | None = None,
    ) -> Job:
        """Publish one embedded job (bytes inputs; str ones are sent as UTF-8); returns the SUBMITTED Job.

        Returns once the broker has confirmed the request. `timeout` is the job's timeout at the worker, in
        seconds. Pass the `message_id` of an earlier Job to retry that request safely (one edge job).
        `updates=True` asks for a non-final reply when the edge accepts the job (its `job_identifier`).
        `reply_to` sends the replies to another queue: this client then does not track the job.
        """
        return self._client._submit(
            identifier,
            version,
            _sources(sources, text=False),
            explain=explain,
            timeout=timeout,
            message_id=message_id,
            request_id=request_id,
            updates=updates,
            reply_to=reply_to,
        )

    def submit_text(
        self,
        identifier: str,
        version: str,
        sources: Mapping[str, Any],
        explain: bool = False,
        *,
        timeout: float | None = None,
        message_id: str | None = None,
        request_id: str | None = None,
        updates: bool = False,
        reply_to: str | None = None,
    ) -> Job:
        """Publish one text job (every input a str); otherwise as `submit_embedded`."""
        return self._client._submit(
            identifier,
            version,
            _sources(sources, text=True),
            explain=explain,
            timeout=timeout,
            message_id=message_id,
            request_id=request_id,
            updates=updates,
            reply_to=reply_to,
        )

    def block_until_complete(self, job: Job, timeout: float | None = 30) -> Job:
        """The final Job for `job`; raises ReplyTimeout after `timeout` seconds (None: wait for ever)."""
        if job.final:
            return job
        return self._client._replies.wait_final(job, timeout)

    def as_completed(self, jobs: Iterable[Job], timeout: float | None = None) -> Iterator[Job]:
        """Yield the final Job of each distinct request as its reply arrives; ReplyTimeout after `timeout` s."""
        return self._client._replies.as_completed(list(jobs), timeout)

    def get_job_details(self, job: Job) -> Job:
        """The latest state this client has seen for `job` (an update or the final reply), without waiting."""
        if job.final:
            return job
        return self._client._replies.latest(job)

    def get_results(self, job: Job) -> dict[str, dict[str, Any]]:
        """As `client.results.get_results` (the SDK has it on `client.jobs`)."""
        return self._client.results.get_results(job)


class Results:
    """`client.results`: the per-source model outputs of a final job."""

    def __init__(self, client: EdgeWorkerClient) -> None:
        self._client = client

    def get_results(self, job: Job) -> dict[str, dict[str, Any]]:
        """Source name -> that source's `results.json` object, as plain dicts; {} when the job has none.

        `job` is a final Job, or a submitted one whose final reply has arrived; otherwise ClientError.
        """
        final = job if job.final else self._client._replies.final_or_none(job)
        if final is None:
            raise ClientError(
                f"job {job.correlation_id} has no final reply yet: call client.jobs.block_until_complete first"
            )
        results: dict[str, dict[str, Any]] = thaw(final.results)
        return results


class EdgeWorkerClient:
    """A producer of job requests for edge-worker, shaped like the edge SDK's `EdgeClient`.

    One background IO thread owns one broker connection; any number of threads may submit and wait at once.
    `url` is one broker URL or a list of them (tried in turn, as the worker does); `tls_*` are the worker's
    `amqp.tls_*` settings. The constructor connects and returns once the first session is ready, or raises
    BrokerUnreachable after `connect_timeout` seconds. Use it as a context manager, or call `close()`.
    """

    def __init__(
        self,
        url: str | Sequence[str] = DEFAULT_URL,
        *,
        queue: str = DEFAULT_QUEUE,
        tls_ca_file: str = "",
        tls_cert_file: str = "",
        tls_key_file: str = "",
        tls_verify: bool = True,
        heartbeat: int = 30,
        connect_timeout: float = 10.0,
        publish_timeout: float = 30.0,
        reply_queue_expires: float = 1800.0,
        prefetch: int = 256,
        max_unclaimed: int = DEFAULT_MAX_UNCLAIMED,
        connection_name: str | None = None,
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("url: at least one broker URL")
        amqp = AmqpConfig(
            url=tuple(urls),
            queue=queue,
            heartbeat=heartbeat,
            tls_ca_file=tls_ca_file,
            tls_cert_file=tls_cert_file,
            tls_key_file=tls_key_file,
            tls_verify=tls_verify,
        )
        name = connection_name or f"edge-worker-client {socket.gethostname()} pid {os.getpid()}"
        parameters = []
        for one in urls:
            params = connection_parameters(amqp, one)
            params.client_properties = {"connection_name": name, "product": "edge-worker-client"}
            parameters.append(params)
        self.queue = queue
        self.connection_name = name
        self._publish_timeout = publish_timeout
        self._replies = Replies(max_unclaimed=max_unclaimed)
        self._link = Link(
            parameters,
            [describe_url(u) for u in urls],
            on_reply=self._replies.on_reply,
            on_stopped=self._replies.close,
            reply_queue_expires_s=reply_queue_expires,
            prefetch=prefetch,
        )
        self.jobs = Jobs(self)
        self.results = Results(self)
        self._link.start(connect_timeout)

    @classmethod
    def from_config(cls, amqp: AmqpConfig, **kwargs: Any) -> EdgeWorkerClient:
        """A client connected as `edge-worker run` connects: the URL list, password and TLS settings of `amqp`."""
        return cls(
            broker_urls(amqp),
            queue=amqp.queue,
            tls_ca_file=amqp.tls_ca_file,
            tls_cert_file=amqp.tls_cert_file,
            tls_key_file=amqp.tls_key_file,
            tls_verify=amqp.tls_verify,
            heartbeat=amqp.heartbeat,
            **kwargs,
        )

    @property
    def reply_queue(self) -> str:
        """The name of this client's reply queue (it can change if the queue expired while disconnected)."""
        return self._link.reply_queue or ""

    def connect(self) -> EdgeWorkerClient:
        """For code written for the SDK's `EdgeClient.connect()`: the client is connected already."""
        return self

    def stats(self) -> dict[str, int]:
        """Counters: replies received, delivered and dropped, reconnects, republished requests."""
        return {
            **self._replies.stats(),
            "reconnects": self._link.reconnects,
            "republished": self._link.republished,
            "reply_queues_lost": self._link.reply_queues_lost,
        }

    def close(self) -> None:
        """Delete the reply queue and close the connection; callers still waiting get ClientClosed."""
        self._link.close()
        self._replies.close()

    def __enter__(self) -> EdgeWorkerClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _submit(
        self,
        identifier: str,
        version: str,
        sources: dict[str, dict[str, bytes | str]],
        *,
        explain: bool,
        timeout: float | None,
        message_id: str | None,
        request_id: str | None,
        updates: bool,
        reply_to: str | None,
    ) -> Job:
        if not isinstance(identifier, str) or not identifier or not isinstance(version, str) or not version:
            raise TypeError("identifier and version: expected non-empty str")
        request: dict[str, Any] = {
            "model": {"identifier": identifier, "version": version},
            "sources": sources,
            "explain": bool(explain),
        }
        if timeout is not None:
            request["timeout"] = timeout
        if request_id is not None:
            request["request_id"] = request_id
        if updates:
            request["updates"] = True
        message_id = message_id or uuid.uuid4().hex
        job = Job(
            status="SUBMITTED",
            final=False,
            message_id=message_id,
            correlation_id=message_id,
            request_id=request_id,
            model=freeze({"identifier": identifier, "version": version}),
            explain=bool(explain),
            total=len(sources),
            pending=len(sources),
            job_inputs=tuple(sources),
        )
        body = msgpack.packb(request, use_bin_type=True)
        out = self._link.new_outgoing(self.queue, message_id, job.correlation_id, body, reply_to)
        if reply_to is not None:
            self._link.publish(out, self._publish_timeout)
            return job
        forget = self._replies.track(job)  # before publishing: a reply may come before the confirm
        try:
            self._link.publish(out, self._publish_timeout)
        except BaseException:
            forget()
            raise
        return job
