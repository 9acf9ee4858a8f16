"""examples/node: the Node.js producer (amqplib + @msgpack/msgpack) against the real broker, worker and emulator.

The example's npm packages are installed from its package-lock.json when missing (tests/nodekit.py: in CI
a missing node or npm fails the test, elsewhere it skips).
"""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict
from typing import Any

from tests.conftest import Queues
from tests.nodekit import ROOT, node_binary, npm_install

EXAMPLE = ROOT / "examples" / "node"


def test_node_producer_round_trip(broker_url: str, queues: Queues, emulator: Any, worker_factory: Any) -> None:
    node = node_binary()
    npm_install(EXAMPLE)
    worker = worker_factory(emulator.url).start()
    # The producer's own durable reply queue (classic, declared by the producer); deleted with this test's queues.
    reply_queue = f"{queues.prefix}.node-replies"
    queues.extra.append(reply_queue)
    run = subprocess.run(
        [node, "producer.js", "--queue", queues.queue, "--reply-queue", reply_queue, "--timeout", "30"],
        cwd=EXAMPLE,
        env={"PATH": "/usr/bin:/bin", "AMQP_URL": broker_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, f"exit {run.returncode}\nstderr:\n{run.stderr}\nstdout:\n{run.stdout}"
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    by_request: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in lines:
        by_request[line["request"]].append(line)
    assert set(by_request) == {"embedded", "shorthand", "text"}, run.stdout

    # Each reply matched its request by correlation id: the one the producer set, echoed in the reply's
    # properties and body, and the one the worker logged for that request_id.
    logged = {e["request_id"]: e for e in worker.events("job_finished")}
    correlation_ids = set()
    for name, replies in by_request.items():
        finals = [r for r in replies if r["reply"]["final"]]
        assert len(finals) == 1, (name, replies)
        for r in replies:
            assert r["matched"] is True
            assert r["reply"]["correlation_id"] == r["correlation_id"]
            assert r["properties"]["type"] == "job.status"
            assert r["properties"]["headers"]["final"] == r["reply"]["final"]
        final = finals[0]["reply"]
        assert final["status"] == "COMPLETE", final
        assert logged[final["request_id"]]["correlation_id"] == finals[0]["correlation_id"]
        correlation_ids.add(finals[0]["correlation_id"])
    assert len(correlation_ids) == 3

    # Bins (and a str beside them, sent as its UTF-8 bytes): the model saw exactly the bytes the producer sent.
    embedded = by_request["embedded"][-1]
    results = embedded["reply"]["results"]
    for source, inputs in embedded["sent"].items():
        for key, digest in inputs.items():
            assert results[source]["inputs"][key]["sha256"] == digest, (source, key)
    assert set(results) == {"cam-1", "cam-2"}

    # The one-level shorthand became the input item "job".
    shorthand = by_request["shorthand"][-1]
    assert shorthand["reply"]["job_inputs"] == ["job"]
    assert shorthand["reply"]["results"]["job"]["inputs"]["image"]["sha256"] == shorthand["sent"]["job"]["image"]

    # The all-str request ran as a text job, and its `updates: true` brought a SUBMITTED reply first.
    text = by_request["text"]
    assert [r["reply"]["status"] for r in text] == ["SUBMITTED", "COMPLETE"]
    assert text[-1]["reply"]["results"]["job"]["inputs"]["seconds"]["sha256"] == text[-1]["sent"]["job"]["seconds"]
    submitted = {e["request_id"]: e["input_type"] for e in worker.events("job_submitted")}
    assert submitted == {"node-embedded": "embedded", "node-shorthand": "embedded", "node-text": "text"}
