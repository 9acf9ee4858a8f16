"""When to look at a submitted job: a duration estimate per model, the first look, then a growing step."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from worker.backoff import backoff_delay
from worker.edge import EdgeClient, EdgeJob, EdgeResults
from worker.errors import JobTimeout
from worker.jobs.gate import EdgeGate
from worker.messages import JobRequest, now_rfc3339

RESULTS_WAIT_S = 5.0  # how long finished-but-not-yet-readable results are waited for
# The first look at a job: the edge starts its clock somewhere between our sending the submission and its
# receipt arriving, so the look comes at sent + share x (receipt - sent) + the usual duration. The share is
# learnt per model: a first look that comes too early moves it up a lot, one that finds the job done moves
# it down a little, which settles where about one first look in 14 comes early (each costs one more call,
# a millisecond later). Measured (bench/results/profile.md): at the receipt (share 1) every look was late
# by the receipt's trip, a median 1.3 ms of added latency more than at the sending (share 0).
FIRST_LOOK_SHARE_START = 0.5
FIRST_LOOK_SHARE_UP = 0.25
FIRST_LOOK_SHARE_DOWN = 0.02
# After the first look, each look waits half again as long as the one before, from 2 % of the estimate
# up to this.
MAX_STEP_S = 2.0


class DurationEstimator:
    """Per model and version: a moving estimate of the job's duration, and when to take the first look."""

    def __init__(self, *, default_s: float = 0.05, alpha: float = 0.3) -> None:
        self._default_s = default_s
        self._alpha = alpha
        self._estimates: dict[tuple[str, str], float] = {}
        self._shares: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def estimate(self, model: tuple[str, str]) -> float:
        with self._lock:
            return self._estimates.get(model, self._default_s)

    def observe(self, model: tuple[str, str], seconds: float) -> None:
        seconds = max(0.001, seconds)
        with self._lock:
            old = self._estimates.get(model)
            self._estimates[model] = seconds if old is None else old + self._alpha * (seconds - old)

    def first_look(self, model: tuple[str, str], sent_at: float, receipt_at: float) -> float:
        """When to look first at a job submitted at sent_at whose receipt arrived at receipt_at."""
        with self._lock:
            share = self._shares.get(model, FIRST_LOOK_SHARE_START)
            estimate = self._estimates.get(model, self._default_s)
        return sent_at + share * max(0.0, receipt_at - sent_at) + estimate

    def share(self, model: tuple[str, str]) -> float:
        """Where in the submission's round trip the edge is taken to start this model's clock (0 to 1)."""
        with self._lock:
            return self._shares.get(model, FIRST_LOOK_SHARE_START)

    def first_look_was(self, model: tuple[str, str], *, early: bool) -> None:
        """Whether the first look found the job still running (early) or ended."""
        with self._lock:
            share = self._shares.get(model, FIRST_LOOK_SHARE_START)
            share = share + FIRST_LOOK_SHARE_UP if early else share - FIRST_LOOK_SHARE_DOWN
            self._shares[model] = min(1.0, max(0.0, share))


class _Schedule:
    """The next look's time, and when the job was last seen still running."""

    def __init__(self, *, first_at: float, step_s: float, accepted_at: float) -> None:
        self.next_at = first_at
        self.last_pending = accepted_at
        self._step_s = step_s

    def still_running(self) -> None:
        self.last_pending = time.monotonic()
        self.next_at = self.last_pending + self._step_s
        self._step_s = min(self._step_s * 1.5, MAX_STEP_S)


class JobFollower:
    """Looks at one submitted job until it ends, and teaches the estimator what it saw."""

    def __init__(
        self, *, edge: EdgeClient, gate: EdgeGate, estimator: DurationEstimator, pause: Callable[[float], None]
    ) -> None:
        self._edge = edge
        self._gate = gate
        self._estimator = estimator
        self._pause = pause  # sleeps, or raises Abandoned when the worker exits

    def follow(
        self,
        job_id: str,
        *,
        base: EdgeJob | None,
        request: JobRequest,
        sent_at: float,
        accepted_at: float,
        deadline: float,
        bound: Any,
    ) -> tuple[EdgeJob, EdgeResults | None]:
        """Look at the job until it ends: first when this model usually finishes, then backing off.

        When the results are wanted, most looks ask for them directly (one call instead of status + results);
        every fourth look, and any finish the results cannot classify, asks for the job's own status, which is
        how cancellations and lost jobs are seen.
        """
        model = (request.model_id, request.version)
        schedule = _Schedule(
            first_at=self._estimator.first_look(model, sent_at, accepted_at),
            step_s=max(0.001, self._estimator.estimate(model) * 0.02),
            accepted_at=accepted_at,
        )
        # A resumed job has no submission round trip of ours: its first look teaches nothing about the share.
        submitted_here = sent_at < accepted_at
        looks = 0
        while True:
            now = time.monotonic()
            if schedule.next_at >= deadline:
                return self._last_look(job_id, now, accepted_at, deadline, bound)
            self._pause(max(0.0, schedule.next_at - now))
            looks += 1
            teaches_share = looks == 1 and submitted_here
            results: EdgeResults | None = None
            if request.want_results and looks % 4 != 0:
                results = self._gate.call(
                    lambda: self._edge.get_results(job_id, deadline=deadline), deadline, "results", bound
                )
                status = results.job_status() if results is not None else None
                if status is not None and results is not None:
                    if teaches_share:
                        self._estimator.first_look_was(model, early=False)
                    self._learn(model, accepted_at, schedule.last_pending, results.elapsed_ms)
                    return _job_from_results(job_id, base, results, status), results
                if results is None or not results.finished:
                    if teaches_share:
                        self._estimator.first_look_was(model, early=True)
                    schedule.still_running()
                    continue
            job = self._gate.call(lambda: self._edge.get_job(job_id, deadline=deadline), deadline, "status", bound)
            if teaches_share:
                self._estimator.first_look_was(model, early=not job.terminal)
            if job.terminal:
                self._learn(model, accepted_at, schedule.last_pending, job.elapsed_ms)
                return job, results if results is not None and results.finished else None
            schedule.still_running()

    def _last_look(
        self, job_id: str, now: float, accepted_at: float, deadline: float, bound: Any
    ) -> tuple[EdgeJob, EdgeResults | None]:
        """The next look would come after the deadline: look once at the deadline, then give up."""
        self._pause(max(0.0, deadline - now))
        job = self._gate.call(lambda: self._edge.get_job(job_id, deadline=deadline + 5), deadline + 5, "status", bound)
        if job.terminal:
            return job, None
        raise JobTimeout(f"the job did not finish within its timeout ({deadline - accepted_at:.3g} s after submission)")

    def _learn(self, model: tuple[str, str], accepted_at: float, last_pending: float, elapsed_ms: int) -> None:
        """Feed the duration estimate: the edge's own figure, else what the looks bracket."""
        seen = time.monotonic() - accepted_at
        if elapsed_ms > 0:
            # Whole milliseconds, cut down (as the emulator does; the edge's rounding is not documented): the run
            # took between elapsed_ms and one more, and the first look is bounded by the receipt, so a low
            # estimate cannot be made up by looking later. The middle of that millisecond is the unbiased figure.
            self._estimator.observe(model, (elapsed_ms + 0.5) / 1000)
        elif last_pending == accepted_at:
            # Done at the first look: it may have finished much sooner, so aim earlier next time.
            self._estimator.observe(model, seen * 0.5)
        else:
            self._estimator.observe(model, (last_pending - accepted_at + seen) / 2)

    def fetch_results(self, job_id: str, deadline: float, bound: Any) -> EdgeResults | None:
        """The results of an ended job, waiting up to RESULTS_WAIT_S for results the edge has not written yet."""
        wait_until = time.monotonic() + RESULTS_WAIT_S
        attempt = 0
        while True:
            attempt += 1
            results = self._gate.call(
                lambda: self._edge.get_results(job_id, deadline=max(deadline, wait_until)),
                max(deadline, wait_until),
                "results",
                bound,
            )
            if results is not None and (results.finished or results.results or results.failures):
                return results
            if time.monotonic() >= wait_until:
                bound.warning("job_results_unavailable", attempts=attempt)
                return None
            self._pause(backoff_delay(attempt, base_s=0.01, cap_s=0.5))


def _job_from_results(job_id: str, base: EdgeJob | None, results: EdgeResults, status: str) -> EdgeJob:
    """The finished job as its results describe it, on top of what the submission receipt said."""
    job = replace(base) if base is not None else EdgeJob(job_identifier=job_id, status=status)
    job.job_identifier = job.job_identifier or job_id
    job.status = status
    job.total = results.total or job.total
    job.completed = results.completed
    job.failed = results.failed
    job.pending = 0
    job.elapsed_ms = results.elapsed_ms or job.elapsed_ms
    job.updated_at = now_rfc3339()
    return job
