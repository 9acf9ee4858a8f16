"""The job lifecycle (runner, with its settings), one run per idempotency key (claims), when to look at a job
(follow), crash bookkeeping (suspects), the edge's up/down state (gate), how a job ends (finish: the final reply
and its size limit; calls: the one job_finished line), and what goes back to the broker layer (outcome,
replies)."""

from worker.jobs.follow import (
    FIRST_LOOK_SHARE_DOWN,
    FIRST_LOOK_SHARE_START,
    FIRST_LOOK_SHARE_UP,
    DurationEstimator,
    JobFollower,
)
from worker.jobs.gate import EdgeGate
from worker.jobs.outcome import Abandoned, DeadLetter, Outcome
from worker.jobs.runner import JobRunner, JobSettings
from worker.jobs.suspects import SUSPECT_AFTER_CRASHES, SUSPECT_GRACE_S, CrashBook, SuspectLine
from worker.jobs.threads import EdgeSlots, JobThreads, SlotHold

__all__ = [
    "FIRST_LOOK_SHARE_DOWN",
    "FIRST_LOOK_SHARE_START",
    "FIRST_LOOK_SHARE_UP",
    "SUSPECT_AFTER_CRASHES",
    "SUSPECT_GRACE_S",
    "Abandoned",
    "CrashBook",
    "DeadLetter",
    "DurationEstimator",
    "EdgeGate",
    "EdgeSlots",
    "JobFollower",
    "JobRunner",
    "JobSettings",
    "JobThreads",
    "Outcome",
    "SlotHold",
    "SuspectLine",
]
