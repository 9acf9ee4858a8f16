"""The naive baseline: the consumer a user would write in an afternoon with the edge SDK's habits.

One message at a time (prefetch 1): decode the msgpack request, build data URIs, `requests.post` the job
(no session, so a new connection per call), poll its status every 10 ms as the SDK does, fetch the
results, publish the reply on a confirming channel (each publish waits for its confirm), then ack.
It is deliberately plain: it is what edge-worker is measured against, not an example to follow.

    python -m bench.naive_consumer --amqp-url URL --queue Q --edge-url URL
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
import uuid
from typing import Any

import msgpack
import pika
import requests

TERMINAL = {"COMPLETE", "COMPLETED", "FAILED", "CANCELED", "CANCELLED", "TIMEDOUT"}
POLL_INTERVAL_S = 0.01  # the SDK's polling interval


def data_uri(value: bytes | str) -> str:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return "data:application/octet-stream;base64," + base64.b64encode(raw).decode("ascii")


def run_job(edge_url: str, request: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
    """Submit one embedded job, poll it to the end, and return a reply dict with its results."""
    model = request["model"]
    sources = request["sources"]
    if not all(isinstance(v, dict) for v in sources.values()):
        sources = {"job": sources}
    body = {
        "model": {"identifier": model["identifier"], "version": model["version"]},
        "explain": bool(request.get("explain", False)),
        "input": {
            "type": "embedded",
            "sources": {s: {k: data_uri(v) for k, v in inputs.items()} for s, inputs in sources.items()},
        },
    }
    receipt = requests.post(f"{edge_url}/api/jobs", json=body, timeout=30)
    receipt.raise_for_status()
    job_id = receipt.json()["jobIdentifier"]
    deadline = time.monotonic() + timeout_s
    while True:
        job = requests.get(f"{edge_url}/api/jobs/{job_id}", timeout=30).json()
        if job.get("status") in TERMINAL or time.monotonic() > deadline:
            break
        time.sleep(POLL_INTERVAL_S)
    results = requests.get(f"{edge_url}/api/results/{job_id}", timeout=30).json()
    return {
        "status": job.get("status"),
        "final": True,
        "job_identifier": job_id,
        "request_id": request.get("request_id"),
        "model": job.get("model"),
        "total": job.get("total"),
        "completed": job.get("completed"),
        "failed": job.get("failed"),
        "results": {source: item.get("results.json") for source, item in (results.get("results") or {}).items()},
        "failures": results.get("failures") or {},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="naive_consumer", description=__doc__.splitlines()[0])
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--edge-url", required=True)
    args = parser.parse_args(argv)
    edge_url = args.edge_url.rstrip("/")

    connection = pika.BlockingConnection(pika.URLParameters(args.amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.basic_qos(prefetch_count=1)

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        request = msgpack.unpackb(body, raw=False)
        try:
            reply = run_job(edge_url, request)
        except (requests.RequestException, KeyError, ValueError) as exc:
            reply = {"status": "ERROR", "final": True, "error": {"code": "ERROR", "message": str(exc)}}
        ch.basic_publish(
            "",
            properties.reply_to,
            msgpack.packb(reply, use_bin_type=True),
            pika.BasicProperties(
                content_type="application/msgpack",
                delivery_mode=2,
                correlation_id=properties.correlation_id or properties.message_id,
                message_id=uuid.uuid4().hex,
            ),
        )
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(args.queue, on_message)
    print(json.dumps({"event": "naive_consuming", "queue": args.queue}), flush=True)
    try:
        channel.start_consuming()
    finally:
        if connection.is_open:
            connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
