"""One run per idempotency key in this process: a redelivery of a request still running waits for it."""

from __future__ import annotations

import threading
import time
from typing import Any

from worker.jobs.outcome import Abandoned


class KeyClaims:
    """The idempotency keys running here, each with the event its run sets when it ends."""

    def __init__(self, stopping: threading.Event) -> None:
        self._stopping = stopping
        self._running: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def claim(self, key: str, limit_s: float, bound: Any) -> bool:
        """Run one delivery of an idempotency key at a time in this process; True: this one owns the key.

        A redelivery (after a lost connection) of a request still running here waits (up to limit_s) for that
        run to end, then finds its reply (or its edge job) in the journal: one edge job, whichever delivery
        answers. The service attaches redeliveries by message_id before this; this catches the request_id-only
        ones. Raises Abandoned when the worker stops during the wait.
        """
        deadline = time.monotonic() + limit_s
        while True:
            with self._lock:
                running = self._running.get(key)
                if running is None:
                    self._running[key] = threading.Event()
                    return True
            bound.info("delivery_waits_for_running_job", reason="the same request is running in this process")
            if not running.wait(max(0.0, deadline - time.monotonic())) or self._stopping.is_set():
                if self._stopping.is_set():
                    raise Abandoned
                bound.warning("delivery_wait_gave_up", waited_s=limit_s)
                return False

    def release(self, key: str) -> None:
        with self._lock:
            done = self._running.pop(key, None)
        if done is not None:
            done.set()
