"""The threads jobs run on."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import structlog

log = structlog.get_logger("worker.service")


class JobThreads:
    """A fixed pool of daemon threads for the jobs.

    Not a ThreadPoolExecutor: the interpreter joins an executor's threads at exit, so a job handed back at
    the drain timeout would hold the process until the job ended at the edge (up to edge.job_timeout),
    defeating worker.drain_timeout. A handed-back job's edge job id is in the journal: the next worker
    resumes it, so nothing is lost by leaving it behind.
    """

    def __init__(self, size: int) -> None:
        self._work: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._serve, name=f"job-{i}", daemon=True) for i in range(size)]
        for thread in self._threads:
            thread.start()

    def submit(self, work: Callable[[], None]) -> None:
        self._work.put(work)

    def _serve(self) -> None:
        while (work := self._work.get()) is not None:
            try:
                work()
            except Exception:  # a thread must survive anything to serve the next job
                log.exception("job_thread_error")

    def shutdown(self) -> None:
        for _ in self._threads:
            self._work.put(None)
