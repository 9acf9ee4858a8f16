"""Publish a few sample requests to a running worker and print their replies as they arrive."""

from __future__ import annotations

import hashlib
import os
import sys
from typing import Any

import pika

from worker.client import EdgeWorkerClient

URL = os.environ.get("EDGE_WORKER_AMQP__URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
QUEUE = os.environ.get("EDGE_WORKER_AMQP__QUEUE", "edge.jobs")


def describe(reply: dict[str, Any]) -> str:
    line = f"  status={reply['status']} final={reply['final']} job={reply['job_identifier']}"
    for source, output in (reply.get("results") or {}).items():
        for key, info in (output.get("inputs") or {}).items():
            line += f"\n    {source}/{key}: {info['size']} bytes, sha256 {info['sha256'][:16]}..."
    if reply.get("error"):
        line += f"\n    error {reply['error']['code']}: {reply['error']['message']}"
    return line


def main() -> int:
    image = os.urandom(64 * 1024)
    samples: list[tuple[str, dict[str, Any] | bytes]] = [
        (
            "two cameras, bytes",
            {
                "model": {"identifier": "sha256", "version": "1.0.0"},
                "sources": {"cam-1": {"image": image}, "cam-2": {"image": image[::-1]}},
            },
        ),
        ("text job, string model", {"model": "sha256", "version": "1.0.0", "sources": {"input.txt": "hello edge"}}),
        (
            "explain, with request_id",
            {
                "model": {"identifier": "ed542963de", "version": "1.0.1"},
                "explain": True,
                "request_id": "demo-42",
                "sources": {"doc": {"input.txt": "explain me"}},
            },
        ),
        ("unknown model", {"model": {"identifier": "nope", "version": "0.0.1"}, "sources": {"x": b"\x00"}}),
        ("garbage (not msgpack)", b"\xc1 this is not msgpack"),
    ]
    print(f"expected sha256 of cam-1/image: {hashlib.sha256(image).hexdigest()[:16]}...")
    failures = 0
    with EdgeWorkerClient(URL, queue=QUEUE) as client:
        pending = {}
        for name, request in samples:
            if isinstance(request, bytes):
                # Raw garbage, published with plain pika: the worker must reject it, not choke on it.
                _publish_raw(request, _props(client, name))
                pending[name] = name
            else:
                pending[name] = client.publish(request, correlation_id=name)
        for name, correlation_id in pending.items():
            reply = client.wait(correlation_id, timeout_s=30)
            print(f"{name}:\n{describe(reply)}")
            expected = {"unknown model": "ERROR", "garbage (not msgpack)": "REJECTED"}.get(name, "COMPLETE")
            failures += reply["status"] != expected
    print("all replies arrived" if not failures else f"{failures} replies were not what the demo expected")
    return 1 if failures else 0


def _publish_raw(body: bytes, props: Any) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    connection.channel().basic_publish("", QUEUE, body, props)
    connection.close()


def _props(client: EdgeWorkerClient, name: str) -> Any:
    return pika.BasicProperties(
        content_type="application/msgpack",
        correlation_id=name,
        message_id=name + "-raw",
        reply_to=client.reply_queue,
        delivery_mode=2,
    )


if __name__ == "__main__":
    sys.exit(main())
