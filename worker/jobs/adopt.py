"""Finding the edge job of a submission whose answer died with a worker process (contract §4, kill -9).

The edge has no idempotency key: a process killed after the edge accepted a job but before the journal
recorded its id leaves a job nothing names. The journal knows a submission was in flight (the submitting
mark, with its wall time); the edge can list its jobs by model and creation time. The job is adopted when
exactly one job can be this submission's, by a rule that leaves no room for another request's job:

- Submissions of the same shape (model, version and set of source names: all the edge shows of a job) go
  out one at a time per process, from the submitting mark until the edge's answer is journaled, and the
  next such mark falls in a later millisecond than the last release of a hold that may have left a job no
  entry names (a retried or failed submission, a chunked upload, a request without an id; SubmitWindows
  below). So a dead process left at most one same-shape submission unanswered, and every other same-shape
  job it made was created before that mark and is named by its journal entry, or was created in an earlier
  millisecond.
- A candidate is a job of the request's model and version, with exactly the request's source names, not
  OPEN (an upload cut halfway is no job to follow), created at or after the mark's millisecond and before
  the next process opened the journal (the dead process was gone by then), and named by no journal entry.
- Exactly one candidate: adopted (atomically: no other entry may name it). None: the submission never
  reached the edge. More than one: ambiguous (the edge is shared with another worker, or a retried
  submission made two), so nothing is adopted and the request is submitted again (edge_job_maybe_duplicated).

It assumes the edge and the worker share a clock (the edge runs on the same device) and that the edge's
timestamps have millisecond precision or better, and that no other worker with another journal submits
jobs of the same shape to the same edge (that one's job could look like ours: see docs).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from worker.edge import EdgeClient
from worker.errors import EdgeError, JobNotFound
from worker.journal import Journal, JournalEntry
from worker.messages import JobRequest

Shape = tuple[str, str, tuple[str, ...]]
# Unclaimed jobs whose details are read, at most: more means the edge ignored the time filter (or shares the
# model with another busy producer), and the search is not worth hundreds of calls on the redelivery's time.
MAX_DETAILS = 32
MAX_LISTED = 500  # jobs of the model in the window, at most, whose claims are looked up in the journal


def shape_of(request: JobRequest) -> Shape:
    """All the edge shows of a job that the request decides: model, version, the set of source names."""
    return (request.model_id, request.version, tuple(sorted(request.sources)))


class SubmitWindows:
    """One unanswered submission per shape at a time, each mark in a millisecond after the last release."""

    _KEEP = 1024  # shapes remembered; beyond that, idle ones are forgotten (a producer may use many)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shapes: dict[Shape, _Window] = {}

    @contextmanager
    def window(self, shape: Shape) -> Iterator[WindowHold]:
        """Hold this shape's window for one submission; mark the hold clean when it leaves no stray job."""
        with self._lock:
            window = self._shapes.get(shape)
            if window is None:
                if len(self._shapes) >= self._KEEP:
                    now_ms = _ms(time.time())
                    for old in [s for s, w in self._shapes.items() if not w.users and w.released_ms < now_ms]:
                        del self._shapes[old]
                window = self._shapes[shape] = _Window()
            window.users += 1
        try:
            with window.lock:
                # The next mark goes in a later millisecond (the edge's resolution) than the release of a hold
                # that may have left a job no journal entry names. A clean hold (one answered attempt, its id
                # journaled) leaves none, so it does not make the next one wait: waiting after every
                # submission made same-shape jobs at concurrency 8 no faster than at 1 (bench, profile.md).
                wait_s = (window.released_ms + 1) / 1000 + 1e-5 - time.time()
                if wait_s > 0:
                    time.sleep(wait_s)
                while _ms(time.time()) <= window.released_ms:  # a clock that sleeps short: rare
                    time.sleep(0.0002)
                hold = WindowHold()
                try:
                    yield hold
                finally:
                    if not hold.clean:
                        window.released_ms = _ms(time.time())
        finally:
            with self._lock:
                window.users -= 1


class WindowHold:
    """One submission's hold of its shape's window; `clean` once its one answered job is journaled."""

    __slots__ = ("clean",)

    def __init__(self) -> None:
        self.clean = False


class _Window:
    __slots__ = ("lock", "released_ms", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.released_ms = -1
        self.users = 0


def _ms(moment: float) -> int:
    """The millisecond a moment falls in (the small epsilon undoes float error on a parsed ".123" stamp)."""
    return int(moment * 1000 + 1e-4)


def _rfc3339(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00").replace("z", "+00:00")).timestamp()
    except ValueError:
        return None


def find_lost_job(
    edge: EdgeClient,
    journal: Journal,
    entry: JournalEntry,
    request: JobRequest,
    *,
    deadline: float,
    bound: Any,
) -> str | None:
    """The id of the edge job this entry's unanswered submission made, adopted in the journal; else None."""
    if entry.submitting_at is None:
        bound.warning("edge_job_maybe_duplicated", reason="no submitting time in the journal", candidates=None)
        return None
    since_ms = _ms(entry.submitting_at)
    until = journal.opened_after(entry.submitting_at) or time.time()
    try:
        listed = edge.list_jobs(
            model_id=request.model_id,
            start=_rfc3339(since_ms / 1000),
            end=_rfc3339(until),
            deadline=deadline,
        )
        names = sorted(request.sources)
        unclaimed = [
            job.job_identifier
            for job in listed
            if job.job_identifier
            and (job.model.get("identifier") or request.model_id) == request.model_id
            and (job.model.get("version") or request.version) == request.version
        ]
        # The journal is asked about a bounded list (sqlite bounds a statement's parameters too).
        taken = journal.claimed(unclaimed) if len(unclaimed) <= MAX_LISTED else set()
        unclaimed = [job_id for job_id in unclaimed if job_id not in taken]
        if len(unclaimed) > MAX_DETAILS:
            bound.warning(
                "edge_job_maybe_duplicated",
                reason="the edge lists too many unclaimed jobs of this model in the window to tell; submitting again",
                candidates=None,
                listed=len(listed),
                previous_job_identifier=entry.job_id,
            )
            return None
        candidates: list[str] = []
        for job_id in unclaimed:
            try:
                job = edge.get_job(job_id, deadline=deadline)
            except JobNotFound:
                continue
            created = _parse(job.created_at)
            if (
                created is not None
                and since_ms <= _ms(created)
                and created <= until
                and job.status != "OPEN"
                and (job.model.get("identifier") or request.model_id) == request.model_id
                and (job.model.get("version") or request.version) == request.version
                and sorted(job.job_inputs) == names
                and job.total in (0, len(names))
            ):
                candidates.append(job_id)
    except EdgeError as exc:
        bound.warning(
            "edge_job_maybe_duplicated",
            reason="the edge's job list could not be read; submitting again",
            error=exc.message,
            candidates=None,
        )
        return None
    if len(candidates) == 1 and journal.adopt_job(entry.key, candidates[0]):
        bound.info(
            "edge_job_adopted",
            job_identifier=candidates[0],
            listed=len(listed),
            reason="a worker died while the edge was answering this request's submission; its job was found",
        )
        return candidates[0]
    bound.warning(
        "edge_job_maybe_duplicated",
        reason="a worker died while the edge was answering this request's submission, and its job cannot be "
        + ("told apart from others" if candidates else "found (the submission may never have reached the edge)")
        + "; submitting again",
        candidates=len(candidates),
        listed=len(listed),
        previous_job_identifier=entry.job_id,
    )
    return None
