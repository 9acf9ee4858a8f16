"""The main path, end to end: a byte request through the real broker and the emulator comes back COMPLETE."""

from __future__ import annotations

import hashlib
from typing import Any

from tests.conftest import Producer, ReplyCollector


def test_bytes_request_completes_with_intact_inputs(
    emulator: Any, worker_factory: Any, producer: Producer, collector: ReplyCollector
) -> None:
    worker = worker_factory(emulator.url).start()
    image = bytes(range(256)) * 40
    mid = producer.publish(
        {"model": {"identifier": "sha256", "version": "1.0.0"}, "sources": {"cam-1": {"image": image}}}
    )
    finals = collector.wait_finals(1)
    reply = finals[mid][0]
    assert reply["status"] == "COMPLETE"
    assert reply["results"]["cam-1"]["inputs"]["image"]["sha256"] == hashlib.sha256(image).hexdigest()
    assert worker.terminate() == 0
