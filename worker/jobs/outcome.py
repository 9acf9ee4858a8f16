"""What a job hands back to the broker layer: an Outcome (reply, dead letter, or hand-back)."""

from __future__ import annotations

from dataclasses import dataclass, field

from worker.messages import ReplyRoute


class Abandoned(Exception):
    """The worker is exiting: the job's thread stops where it is; the request was handed back."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    body: bytes = field(repr=False)  # payload bytes never reach a log line
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the broker layer must do with one delivery."""

    route: ReplyRoute
    status: str
    reply: bytes | None = field(default=None, repr=False)
    dead_letter: DeadLetter | None = None
    requeue: bool = False  # hand the delivery back instead of replying
    journaled: bool = False  # the reply is in the journal (which also ended the run's running mark)
