"""Publish a few sample requests to a running worker with worker.client and print the replies as they arrive."""

from __future__ import annotations

import hashlib
import os
import sys
from typing import Any

import msgpack
import pika

from worker.client import EdgeWorkerClient, Job, JobError

URL = os.environ.get("EDGE_WORKER_AMQP__URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
QUEUE = os.environ.get("EDGE_WORKER_AMQP__QUEUE", "edge.jobs")
GARBAGE = "garbage (not msgpack)"


def describe(job: Job) -> str:
    line = f"  status={job.status} final={job.final} job={job.job_identifier}"
    for source, output in job.results.items():
        for key, info in (output.get("inputs") or {}).items():
            line += f"\n    {source}/{key}: {info['size']} bytes, sha256 {info['sha256'][:16]}..."
    try:
        job.raise_for_error()
    except JobError as exc:
        line += f"\n    {type(exc).__name__} {exc.code}: {exc.message}"
    return line


def main() -> int:
    image = os.urandom(64 * 1024)
    expected = {"unknown model": "ERROR", GARBAGE: "REJECTED"}
    print(f"expected sha256 of cam-1/image: {hashlib.sha256(image).hexdigest()[:16]}...")
    failures = 0
    with EdgeWorkerClient(URL, queue=QUEUE) as client:
        jobs = {
            "two cameras, bytes": client.jobs.submit_embedded(
                "sha256", "1.0.0", {"cam-1": {"image": image}, "cam-2": {"image": image[::-1]}}
            ),
            "text job, one-level sources": client.jobs.submit_text("sha256", "1.0.0", {"input.txt": "hello edge"}),
            "explain, with request_id": client.jobs.submit_text(
                "ed542963de", "1.0.1", {"doc": {"input.txt": "explain me"}}, True, request_id="demo-42"
            ),
            "unknown model": client.jobs.submit_embedded("nope", "0.0.1", {"x": b"\x00"}),
        }
        names = {job.correlation_id: name for name, job in jobs.items()}
        print(f"published {len(jobs)} requests (confirmed); replies in order of arrival:")
        for final in client.jobs.as_completed(jobs.values(), timeout=30):
            name = names[final.correlation_id]
            print(f"{name}:\n{describe(final)}")
            failures += final.status != expected.get(name, "COMPLETE")
    garbage = _garbage_reply()  # no client method publishes bytes that are not a request: plain pika
    print(f"{GARBAGE}:\n  status={garbage['status']} error {garbage['error']['code']}: {garbage['error']['message']}")
    failures += garbage["status"] != expected[GARBAGE]
    print("all replies arrived" if not failures else f"{failures} replies were not what the demo expected")
    return 1 if failures else 0


def _garbage_reply() -> dict[str, Any]:
    """Publish bytes that are not msgpack with plain pika: the worker must reject them, not choke on them."""
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        reply_queue = channel.queue_declare("", exclusive=True).method.queue
        props = pika.BasicProperties(
            content_type="application/msgpack", message_id="demo-garbage", reply_to=reply_queue, delivery_mode=2
        )
        channel.basic_publish("", QUEUE, b"\xc1 this is not msgpack", props, mandatory=True)
        for _method, _props, body in channel.consume(reply_queue, auto_ack=True, inactivity_timeout=30):
            if body is None:
                raise TimeoutError("no reply to the garbage request within 30 s")
            reply: dict[str, Any] = msgpack.unpackb(body, raw=False)
            if reply.get("final"):
                return reply
        raise AssertionError("unreachable")
    finally:
        connection.close()


if __name__ == "__main__":
    sys.exit(main())
