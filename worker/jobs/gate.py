"""The edge's up/down state: workers report outages, one probe thread finds the edge again, and every edge
step of a job passes through the gate (waiting while the edge is down, up to the job's deadline)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

from worker.backoff import backoff_delay
from worker.edge import EdgeClient
from worker.errors import EdgeUnavailable, JobError, JobTimeout
from worker.jobs.outcome import Abandoned

log = structlog.get_logger("worker.jobs")
T = TypeVar("T")


class EdgeGate:
    """Whether the edge answers. Workers report outages; one probe thread finds the edge again."""

    def __init__(self, client: EdgeClient, *, on_change: Callable[[bool], None] | None = None) -> None:
        self._client = client
        self._on_change = on_change
        self._up = threading.Event()
        self._up.set()
        self._lock = threading.Lock()
        self._prober: threading.Thread | None = None
        self._idle_probing = threading.Event()
        self._stopped = threading.Event()

    @property
    def is_up(self) -> bool:
        return self._up.is_set()

    def report_down(self, reason: str) -> None:
        with self._lock:
            if not self._up.is_set():
                return
            self._up.clear()
            log.warning("edge_down", reason=reason)
            self._prober = threading.Thread(target=self._probe_until_up, name="edge-probe", daemon=True)
            self._prober.start()
        if self._on_change is not None:
            self._on_change(False)

    def wait_up(self, deadline: float) -> bool:
        """Wait until the edge is up (True) or the deadline passes (False); raises Abandoned on stop()."""
        while not self._up.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._stopped.is_set():
                raise Abandoned
            self._up.wait(min(remaining, 0.5))
        return True

    def probe_idle(self) -> None:
        """One probe off the caller's thread: an edge that stopped answering while idle is an outage too."""
        if self._idle_probing.is_set():
            return
        self._idle_probing.set()
        threading.Thread(target=self._probe_once, name="edge-idle-probe", daemon=True).start()

    def call(self, step: Callable[[], T], deadline: float, name: str, bound: Any) -> T:
        """Run one edge step; while the edge is down, wait for it to come back until the job's deadline."""
        while True:
            if not self.wait_up(deadline):
                raise _outage_error(name)
            try:
                result = step()
            except EdgeUnavailable as exc:
                bound.warning("edge_unavailable", step=name, error=exc.message)
                self.report_down(exc.message)
                if time.monotonic() >= deadline:
                    raise _outage_error(name) from None
                continue
            return result

    def stop(self) -> None:
        self._stopped.set()

    def _probe_once(self) -> None:
        try:
            answers, why = self._client.answers()
            if not answers:
                self.report_down(f"idle probe: {why}")
        finally:
            self._idle_probing.clear()

    def _probe_until_up(self) -> None:
        attempt = 0
        while not self._stopped.is_set():
            attempt += 1
            answers, why = self._client.answers()
            if not answers:
                delay = backoff_delay(attempt, base_s=0.25, cap_s=5.0) + 0.05
                log.debug("edge_probe_failed", attempt=attempt, error=why, next_probe_s=round(delay, 3))
                self._stopped.wait(delay)
                continue
            log.info("edge_up", probes=attempt)
            self._up.set()
            if self._on_change is not None:
                self._on_change(True)
            return


def _outage_error(step: str) -> JobError:
    if step == "submit":
        return EdgeUnavailable("the edge stayed unreachable until the request's timeout; the job was never submitted")
    return JobTimeout("the edge stayed unreachable until the request's timeout")
