"""Crash bookkeeping: the journal's count of each request's deliveries and crashes, the running mark that is
the evidence of a crash, and the line that runs suspects one at a time so that a poison request dies alone."""

from __future__ import annotations

import hashlib
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worker.jobs.outcome import Abandoned, Outcome
from worker.journal import Journal, JournalEntry

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


@dataclass(frozen=True, slots=True)
class Tracked:
    """One delivery as the journal counts it: under its idempotency key, or under its body's digest."""

    tracking_key: str
    key: str | None
    entry: JournalEntry | None  # None without a journal
    slot: tuple[str, int] | None = None  # a request without an id: (its digest, its place among the same bytes)


class CrashBook:
    """The journal's side of a run: the delivery count, the running mark around the run, the suspect line."""

    def __init__(self, journal: Journal | None, *, line: SuspectLine) -> None:
        self._journal = journal
        self._line = line
        self._slots_lock = threading.Lock()
        self._slots: dict[str, set[int]] = {}  # digest -> the places taken by deliveries of those bytes here

    def record_delivery(self, key: str | None, body: bytes) -> Tracked:
        """Count this delivery; the entry says how often it came, crashed, and whether it has its reply.

        Every call is followed by done() once the delivery is handled.
        """
        # Requests without an id are tracked by their body: enough to count deliveries and crashes, never to
        # resume or replay (two producers may send the same bytes). Identical bytes in flight at once are not
        # redeliveries of each other: each takes the lowest place free among them here (sha256:<d>, then
        # sha256:<d>#1, ...), so a burst of the same request counts one delivery each, and after a crash the
        # copies that come back count again against the places they take.
        slot: tuple[str, int] | None = None
        if key is None:
            digest = hashlib.sha256(body).hexdigest()
            with self._slots_lock:
                taken = self._slots.setdefault(digest, set())
                place = next(i for i in itertools.count() if i not in taken)
                taken.add(place)
            slot = (digest, place)
            tracking_key = f"sha256:{digest}" if place == 0 else f"sha256:{digest}#{place}"
        else:
            tracking_key = key
        entry = None
        if self._journal is not None:
            # Marked as run by this process in the same commit, unless it is a suspect (marked in run(), once it
            # is its turn) or already finished.
            entry = self._journal.record_delivery(tracking_key, mark_running_below=SUSPECT_AFTER_CRASHES)
        return Tracked(tracking_key, key, entry, slot)

    def done(self, tracked: Tracked) -> None:
        """The delivery is handled (its place among identical bytes is free again)."""
        if tracked.slot is None:
            return
        digest, place = tracked.slot
        with self._slots_lock:
            taken = self._slots.get(digest)
            if taken is not None:
                taken.discard(place)
                if not taken:
                    del self._slots[digest]

    def give_up(self, tracked: Tracked) -> None:
        """The delivery limit is reached: the request is dead-lettered, not run."""
        if tracked.key is None and self._journal is not None:
            self._journal.forget(tracked.tracking_key)  # dead-lettered: the same bytes sent again start afresh
        elif tracked.entry is not None and tracked.entry.running:
            assert self._journal is not None
            self._journal.record_stopped(tracked.tracking_key)

    def run(self, tracked: Tracked, *, deliveries: int, bound: Any, work: Callable[[], Outcome]) -> Outcome:
        """Run `work` with the running mark set (a suspect waits for its turn first); clear the mark after."""
        entry = tracked.entry
        suspect = entry is not None and entry.crashes >= SUSPECT_AFTER_CRASHES
        if suspect:
            assert entry is not None
            bound.warning(
                "job_suspect",
                reason="a worker process died while running this request; it runs alone among suspects",
                crashes=entry.crashes,
                isolated_crashes=entry.isolated_crashes,
                deliveries=deliveries,
            )
            self._line.acquire(rank=entry.isolated_crashes)
        try:
            if self._journal is not None and (suspect or entry is None or not entry.running):
                self._journal.record_running(tracked.tracking_key, isolated=suspect)
            finished = False
            replied = False
            try:
                outcome = work()
                finished = not outcome.requeue
                replied = outcome.journaled
                return outcome
            finally:
                if self._journal is not None:
                    if finished and tracked.key is None:
                        # Tracked by its bytes only to count deliveries and crashes: once answered, forget it,
                        # or the next request with the same bytes would inherit its count.
                        self._journal.forget(tracked.tracking_key)
                    elif not replied:  # record_reply has already taken the running mark off
                        self._journal.record_stopped(tracked.tracking_key)
        finally:
            if suspect:
                self._line.release()
