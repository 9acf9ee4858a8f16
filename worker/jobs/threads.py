"""The threads jobs run on, and the deliveries held for them (worker.lookahead)."""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

import structlog

from worker.jobs.outcome import Abandoned

log = structlog.get_logger("worker.service")
T = TypeVar("T")


class JobThreads(Generic[T]):
    """A fixed pool of `size` daemon threads running `run(item)`, and the items waiting for one of them.

    At most `size` items run at once. Items submitted while every thread is busy wait in arrival order; a
    thread that ends an item takes the next one at once, on its own thread. `take_back()` removes the
    waiting items (the drain hands their deliveries back before it waits for the running ones).

    The hand-off is a queue.SimpleQueue (C code, one lock): measured cheaper per job than a
    Condition over a deque (bench/results/profile.md).

    Not a ThreadPoolExecutor: the interpreter joins an executor's threads at exit, so a job handed back at
    the drain timeout would hold the process until the job ended at the edge (up to edge.job_timeout),
    defeating worker.drain_timeout. A handed-back job's edge job id is in the journal: the next worker
    resumes it, so nothing is lost by leaving it behind.
    """

    def __init__(self, size: int, run: Callable[[T], None]) -> None:
        self._run = run
        self._work: queue.SimpleQueue[T | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._serve, name=f"job-{i}", daemon=True) for i in range(size)]
        for thread in self._threads:
            thread.start()

    def submit(self, item: T) -> None:
        self._work.put(item)

    @property
    def held(self) -> int:
        """Items waiting for a thread."""
        return self._work.qsize()

    def take_back(self) -> list[T]:
        """Remove and return every waiting item, oldest first; none of them will run."""
        items: list[T] = []
        stops = 0
        while True:
            try:
                item = self._work.get_nowait()
            except queue.Empty:
                break
            if item is None:
                stops += 1
            else:
                items.append(item)
        for _ in range(stops):  # a shutdown's stop marks stay
            self._work.put(None)
        return items

    def _serve(self) -> None:
        while (item := self._work.get()) is not None:
            try:
                self._run(item)
            except Exception:  # a thread must survive anything to serve the next job
                log.exception("job_thread_error")

    def shutdown(self) -> None:
        """Threads end when their current item does; items still waiting never start."""
        self.take_back()
        for _ in self._threads:
            self._work.put(None)


class EdgeSlots:
    """The `concurrency` edge slots: a job holds one from its submission until its edge job has ended.

    A delivery held beyond the concurrency (worker.lookahead) does its decoding on its own thread, then
    waits here, first come first served, so that the moment a job ends at the edge the next one is
    submitted: the finished one's results, reply, journal entry, confirm and ack happen meanwhile.
    """

    def __init__(self, size: int) -> None:
        self._free = size
        self._lock = threading.Lock()
        self._waiting: deque[_Waiter] = deque()
        self._closed = False

    def acquire(self, deadline: float) -> bool:
        """Take a slot (True), or give up at the deadline (False); raises Abandoned when handed back."""
        with self._lock:
            if self._closed:
                raise Abandoned
            if self._free > 0 and not self._waiting:
                self._free -= 1
                return True
            waiter = _Waiter()
            self._waiting.append(waiter)
        waiter.event.wait(max(0.0, deadline - time.monotonic()))
        with self._lock:
            if waiter.granted:
                return True
            self._waiting.remove(waiter)  # not granted: still in line
            if waiter.abandoned:
                raise Abandoned
            return False

    def release(self) -> None:
        with self._lock:
            for waiter in self._waiting:
                if not waiter.abandoned:  # an abandoned one leaves the line itself when it wakes
                    self._waiting.remove(waiter)
                    waiter.granted = True
                    waiter.event.set()
                    return
            self._free += 1

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def abandon_waiting(self) -> int:
        """Wake every job waiting for a slot with Abandoned (its delivery is handed back); returns how many."""
        with self._lock:
            waiters = [w for w in self._waiting if not w.abandoned]
            for waiter in waiters:
                waiter.abandoned = True
                waiter.event.set()
        return len(waiters)

    def close(self) -> int:
        """The drain: abandon the waiting jobs, and any that would wait from now on; returns how many waited."""
        with self._lock:
            self._closed = True
        return self.abandon_waiting()


class _Waiter:
    __slots__ = ("abandoned", "event", "granted")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.granted = False
        self.abandoned = False


class SlotHold:
    """One job's hold on an edge slot, released once (early, when its edge job ends, or at the end anyway)."""

    __slots__ = ("_held", "_slots")

    def __init__(self, slots: EdgeSlots | None) -> None:
        self._slots = slots
        self._held = False

    def take(self, deadline: float) -> bool:
        if self._slots is None:
            return True
        self._held = self._slots.acquire(deadline)
        return self._held

    def release(self) -> None:
        if self._held and self._slots is not None:
            self._held = False
            self._slots.release()
