"""The handle() calls in progress: each ends with exactly one job_finished line, whoever ends it."""

from __future__ import annotations

import threading
import time
from typing import Any


class Call:
    """One handle() call: its job_finished line is written once, by whichever path ends it first."""

    __slots__ = ("_done", "_lock", "bound", "started")

    def __init__(self, bound: Any, started: float) -> None:
        self.bound = bound
        self.started = started
        self._done = False
        self._lock = threading.Lock()

    def finish(self, *, status: str, duration_s: float, quiet: bool = False, **fields: Any) -> None:
        """Write job_finished unless written already (then, unless quiet, a second attempt is a bug: said so)."""
        with self._lock:
            done, self._done = self._done, True
        if done:
            if not quiet:
                self.bound.error("job_finished_twice", status=status)
            return
        self.bound.info("job_finished", status=status, duration_s=round(duration_s, 4), **fields)


class Calls:
    """The calls running now, and this thread's own: the runner's stop() waits for them to say they ended."""

    def __init__(self) -> None:
        self._local = threading.local()  # .call: this thread's handle() in progress
        self._calls: set[Call] = set()
        self._cond = threading.Condition()

    def open(self, bound: Any, started: float) -> Call:
        """This thread starts a handle() call."""
        call = self._local.call = Call(bound, started)
        with self._cond:
            self._calls.add(call)
        return call

    def close(self, call: Call) -> None:
        self._local.call = None
        with self._cond:
            self._calls.discard(call)
            self._cond.notify_all()

    def log_finished(self, bound: Any, *, status: str, duration_s: float, **fields: Any) -> None:
        """The one job_finished line of this thread's handle() call, with the job's own context (bound)."""
        call: Call | None = getattr(self._local, "call", None)
        if call is None:  # not inside handle(): nothing to count
            bound.info("job_finished", status=status, duration_s=round(duration_s, 4), **fields)
            return
        call.bound = bound
        call.finish(status=status, duration_s=duration_s, **fields)

    def wait_ended(self, wait_s: float) -> list[Call]:
        """Wait up to wait_s for the running calls to end; those still running then."""
        deadline = time.monotonic() + wait_s
        with self._cond:
            while self._calls and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            return list(self._calls)
