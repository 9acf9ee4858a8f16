"""The threads jobs run on, and the deliveries held for them (worker.lookahead)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

import structlog

log = structlog.get_logger("worker.service")
T = TypeVar("T")


class JobThreads(Generic[T]):
    """A fixed pool of `size` daemon threads running `run(item)`, and the items waiting for one of them.

    At most `size` items run at once: that is the concurrency. Items submitted while every thread is busy
    are held in arrival order; a thread that ends an item takes the next held one at once, on its own
    thread, without a round trip through the IO loop. `take_back()` removes the held items (the drain hands
    their deliveries back before it waits for the running ones).

    Not a ThreadPoolExecutor: the interpreter joins an executor's threads at exit, so a job handed back at
    the drain timeout would hold the process until the job ended at the edge (up to edge.job_timeout),
    defeating worker.drain_timeout. A handed-back job's edge job id is in the journal: the next worker
    resumes it, so nothing is lost by leaving it behind.
    """

    def __init__(self, size: int, run: Callable[[T], None]) -> None:
        self._run = run
        self._held: deque[T] = deque()
        self._ready = threading.Condition(threading.Lock())
        self._running = 0
        self._stopped = False
        self._threads = [threading.Thread(target=self._serve, name=f"job-{i}", daemon=True) for i in range(size)]
        for thread in self._threads:
            thread.start()

    def submit(self, item: T) -> None:
        with self._ready:
            self._held.append(item)
            self._ready.notify()

    @property
    def held(self) -> int:
        """Items waiting for a thread."""
        with self._ready:
            return len(self._held)

    @property
    def running(self) -> int:
        """Items running now (at most `size`)."""
        with self._ready:
            return self._running

    def take_back(self) -> list[T]:
        """Remove and return every held item, oldest first; none of them will run."""
        with self._ready:
            items = list(self._held)
            self._held.clear()
        return items

    def _serve(self) -> None:
        while True:
            with self._ready:
                while not self._held and not self._stopped:
                    self._ready.wait()
                if self._stopped:
                    return
                item = self._held.popleft()
                self._running += 1
            try:
                self._run(item)
            except Exception:  # a thread must survive anything to serve the next job
                log.exception("job_thread_error")
            finally:
                with self._ready:
                    self._running -= 1

    def shutdown(self) -> None:
        """Threads end when their current item does; held items never start."""
        with self._ready:
            self._stopped = True
            self._ready.notify_all()
