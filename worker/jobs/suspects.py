"""Crash bookkeeping: which requests were running when worker processes died, and the line that runs those
suspects one at a time so that a poison request dies alone."""

from __future__ import annotations

import heapq
import itertools
import threading
import time

from worker.jobs.outcome import Abandoned

# A request becomes a suspect once a worker process has died this many times while running it. One
# crash proves little (kill -9, OOM, a power cut: everything in flight was running), and holding its
# companions back would only keep them unacknowledged for the next crash to count again; a second crash
# with the same request running is worth isolating it. Innocent companions of a poison request are counted
# by the broker at most about three times (twice beside it, once while waiting behind it), so a delivery
# limit of 4 or more spares them.
SUSPECT_AFTER_CRASHES = 2
# After a restart the broker redelivers a burst: a request that already crashed a worker while running as
# the one suspect waits this long after the first suspect of the burst arrived, so that the others (which
# rank before it) are in line by the time the line is free.
SUSPECT_GRACE_S = 0.5


class SuspectLine:
    """Runs suspects (requests that were running when worker processes died) one at a time.

    Every request in flight when a process dies comes back with a higher delivery count, whichever of them
    killed it. Run together again, a poison request would take the same innocent ones down with it each
    time, until they all reached the delivery limit. Run one at a time, the poison dies alone: the journal
    marks it (a crash while it ran as the one suspect), and the others, ranked by those marks, go first the
    next time. Other requests are not held by this line: they run beside the one suspect.
    """

    def __init__(self, *, grace_s: float = SUSPECT_GRACE_S) -> None:
        self._grace_s = grace_s
        self._cond = threading.Condition()
        self._waiting: list[tuple[int, int]] = []  # (rank, arrival), a heap
        self._arrival = itertools.count()
        self._busy = False
        self._stopped = False
        self._first_arrival: float | None = None

    def acquire(self, rank: int) -> None:
        """Wait for this suspect's turn: lowest rank first, then arrival; raises Abandoned on stop()."""
        ticket = (rank, next(self._arrival))
        with self._cond:
            if self._first_arrival is None:
                self._first_arrival = time.monotonic()
            not_before = self._first_arrival + (self._grace_s if rank > 0 else 0.0)
            heapq.heappush(self._waiting, ticket)
            try:
                while True:
                    if self._stopped:
                        raise Abandoned
                    wait_s = not_before - time.monotonic()
                    if not self._busy and self._waiting[0] == ticket and wait_s <= 0:
                        break
                    self._cond.wait(wait_s if wait_s > 0 else None)
            except BaseException:
                self._waiting.remove(ticket)
                heapq.heapify(self._waiting)
                self._cond.notify_all()
                raise
            heapq.heappop(self._waiting)
            self._busy = True

    def release(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
