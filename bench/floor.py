"""The floor under the worker's added latency: what any worker must pay, measured in the same run.

- The broker's share: `python -m bench.floor echo ...` is a consumer that answers each request at once, the
  way the worker must (a reply published with a confirm, then the request acknowledged), on queues declared
  exactly as the worker declares them. Its publish-to-reply time is the broker's part of the worker's.
- The edge's share: `EdgeDirect` makes the worker's two edge calls (the submission, then the results once
  the job has ended) from one client over one kept-alive connection: HTTP through a urllib3 pool (the
  transport the worker uses), or gRPC through the generated stubs. The two calls' wall time is the edge's
  part (its serving and the network's), the job's own run excluded.

The worker's own share is its added latency minus these two.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from typing import Any

import msgpack
import pika
import urllib3

from worker.broker_setup import QueuePlan
from worker.config import AmqpConfig


def grpc_unavailable() -> str | None:
    """None when the worker can talk gRPC to the edge (grpc:// in edge.url) and grpcio is installed, else why not."""
    try:
        import grpc  # noqa: F401 -- the optional [grpc] extra

        from worker._proto.jobs.v1 import jobs_pb2_grpc  # noqa: F401
    except ImportError as exc:
        return f"grpcio or the generated stubs are missing ({exc})"
    from worker.config import load_config
    from worker.errors import ConfigError

    try:
        load_config(None, {"EDGE_WORKER_EDGE__URL": "grpc://127.0.0.1:50051"})
    except ConfigError as exc:
        return f"the worker does not take grpc:// edge URLs yet ({exc})"
    return None


# -- the broker's share ------------------------------------------------------------------------------


def echo(amqp_url: str, queue: str, reply_queue: str, dead_letter_queue: str, queue_type: str) -> int:
    """Answer every request at once: publish a final reply, wait for its confirm, then ack the request."""
    plan = QueuePlan.from_config(
        AmqpConfig(queue=queue, reply_queue=reply_queue, dead_letter_queue=dead_letter_queue, queue_type=queue_type)
    )
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    for name, arguments in plan.arguments.items():
        channel.queue_declare(name, durable=True, arguments=arguments)
    channel.confirm_delivery()
    channel.basic_qos(prefetch_count=1)
    reply = msgpack.packb({"final": True, "status": "COMPLETE"}, use_bin_type=True)

    def on_message(ch: Any, method: Any, properties: Any, _body: bytes) -> None:
        ch.basic_publish(
            "",
            properties.reply_to,
            reply,
            pika.BasicProperties(
                content_type="application/msgpack",
                delivery_mode=2,
                correlation_id=properties.correlation_id or properties.message_id,
            ),
            mandatory=True,
        )  # a confirming channel: returns once the broker confirmed it
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(queue, on_message)
    print(json.dumps({"event": "echo_consuming", "queue": queue}), flush=True)
    try:
        channel.start_consuming()
    finally:
        if connection.is_open:
            connection.close()
    return 0


# -- the edge's share --------------------------------------------------------------------------------


class EdgeDirect:
    """The worker's two edge calls for one job, timed: submit, then (once the job has run) its results."""

    def __init__(self, http_url: str, grpc_target: str | None = None) -> None:
        self._pool = urllib3.connection_from_url(http_url, maxsize=1)
        self._grpc_target = grpc_target
        self._stubs: Any = None

    def close(self) -> None:
        self._pool.close()
        if self._stubs is not None:
            self._stubs[0].close()

    def http_job(self, model: dict[str, str], payload: bytes, job_s: float) -> float:
        """Seconds the two HTTP calls took (the job's run between them not counted)."""
        uri = "data:application/octet-stream;base64," + base64.b64encode(payload).decode("ascii")
        body = json.dumps(
            {"model": model, "explain": False, "input": {"type": "embedded", "sources": {"job": {"input": uri}}}},
            separators=(",", ":"),
        ).encode()
        started = time.perf_counter()
        receipt = self._pool.urlopen("POST", "/api/jobs", body=body, headers={"Content-Type": "application/json"})
        submitted = time.perf_counter()
        job_id = json.loads(receipt.data)["jobIdentifier"]
        return submitted - started + self._after_run(job_s, lambda: self._http_results(job_id))

    def _http_results(self, job_id: str) -> bool:
        answer = json.loads(self._pool.urlopen("GET", f"/api/results/{job_id}").data)
        return bool(answer.get("finished"))

    def grpc_job(self, model: dict[str, str], payload: bytes, job_s: float) -> float:
        """Seconds the two gRPC calls took (the job's run between them not counted)."""
        from worker._proto.common.v1 import common_pb2
        from worker._proto.jobs.v1 import jobs_pb2

        jobs, results = self._grpc()
        uri = "data:application/octet-stream;base64," + base64.b64encode(payload).decode("ascii")
        submission = jobs_pb2.JobSubmission(model=common_pb2.ModelIdentifier(**model))
        submission.input.type = "embedded"
        submission.input.sources["job"].update({"input": uri})
        started = time.perf_counter()
        receipt = jobs.SubmitJob(submission, timeout=30)
        submitted = time.perf_counter()
        ident = jobs_pb2.JobIdentifier(identifier=receipt.job_identifier)
        return (
            submitted - started + self._after_run(job_s, lambda: bool(results.GetResults(ident, timeout=30).finished))
        )

    def _grpc(self) -> tuple[Any, Any]:
        if self._stubs is None:
            import grpc

            from worker._proto.jobs.v1 import jobs_pb2_grpc
            from worker._proto.results.v1 import results_pb2_grpc

            assert self._grpc_target is not None
            channel = grpc.insecure_channel(self._grpc_target)
            self._stubs = (
                channel,
                jobs_pb2_grpc.JobServiceStub(channel),
                results_pb2_grpc.ResultsServiceStub(channel),
            )
        return self._stubs[1], self._stubs[2]

    @staticmethod
    def _after_run(job_s: float, results: Any) -> float:
        """Wait out the job (with a margin), then time the results call; again if the job was not done."""
        time.sleep(job_s + 0.005)  # sleep-ok: the job runs at the edge meanwhile; this time is not counted
        while True:
            started = time.perf_counter()
            finished = results()
            took = time.perf_counter() - started
            if finished:
                return took
            time.sleep(0.002)  # sleep-ok: a slow edge; the late call is the one counted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("echo", help="the broker's share: answer every request at once")
    run.add_argument("--amqp-url", required=True)
    run.add_argument("--queue", required=True)
    run.add_argument("--reply-queue", required=True)
    run.add_argument("--dead-letter-queue", required=True)
    run.add_argument("--queue-type", default="quorum", choices=["quorum", "classic"])
    args = parser.parse_args(argv)
    return echo(args.amqp_url, args.queue, args.reply_queue, args.dead_letter_queue, args.queue_type)


if __name__ == "__main__":
    sys.exit(main())
