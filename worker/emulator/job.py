"""What the emulator keeps of a job: its inputs reduced to digests, and times from which its status follows."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

# Enough of each input to see a b"FAIL" marker and the sleep model's "seconds" text.
HEAD_BYTES = 64
TERMINAL = frozenset({"COMPLETE", "FAILED", "CANCELED"})


class InputDigest:
    """One model input: a running sha256, its size, how many chunks made it and its first bytes."""

    __slots__ = ("_sha", "chunks", "head", "size")

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.size = 0
        self.chunks = 0
        self.head = b""

    @classmethod
    def of(cls, data: bytes) -> InputDigest:
        digest = cls()
        digest.update(data)
        return digest

    def update(self, data: bytes) -> None:
        self._sha.update(data)
        self.size += len(data)
        self.chunks += 1
        if len(self.head) < HEAD_BYTES:
            self.head += data[: HEAD_BYTES - len(self.head)]

    def as_json(self) -> dict[str, Any]:
        return {"sha256": self._sha.hexdigest(), "size": self.size}


@dataclass(frozen=True, slots=True)
class Submission:
    """A parsed JobSubmission."""

    identifier: str
    version: str
    explain: bool
    input_type: str  # "text", "embedded" or "open"
    inputs: dict[str, dict[str, InputDigest]]


class Job:
    """One job; start and end are fixed when it takes a slot, and its status follows the clock."""

    __slots__ = (
        "created_at",
        "duration_s",
        "end",
        "explain",
        "failed_sources",
        "forgotten",
        "frozen_status",
        "halted_at",
        "id",
        "identifier",
        "input_type",
        "inputs",
        "scheduled",
        "start",
        "submitted_at",
        "version",
    )

    def __init__(self, submission: Submission, created_at: float) -> None:
        self.id = str(uuid.uuid4())
        self.identifier = submission.identifier
        self.version = submission.version
        self.explain = submission.explain
        self.input_type = submission.input_type
        self.inputs = submission.inputs
        self.created_at = created_at
        self.submitted_at = created_at
        self.duration_s = 0.0
        self.scheduled = False  # submitted with inputs, or closed; False while OPEN
        # Monotonic times; None while the job waits for a slot (or is OPEN).
        self.start: float | None = None
        self.end: float | None = None
        # When a cancel or an edge restart cut the job short; its interval ends there.
        self.halted_at: float | None = None
        # A status that no longer follows the clock (CANCELED, or whatever it was when forgotten).
        self.frozen_status: str | None = None
        self.forgotten = False
        self.failed_sources: frozenset[str] = frozenset()

    def status(self, now: float) -> str:
        if self.frozen_status is not None:
            return self.frozen_status
        if not self.scheduled:
            return "OPEN"
        if self.start is None or self.end is None or now < self.start:
            return "SUBMITTED"
        if now < self.end:
            return "IN_PROGRESS"
        return "FAILED" if len(self.failed_sources) == len(self.inputs) else "COMPLETE"

    def is_running(self, now: float) -> bool:
        return (
            self.halted_at is None and self.start is not None and self.end is not None and self.start <= now < self.end
        )

    def interval(self, now: float) -> tuple[float, float] | None:
        """The part of [start, end) that has really elapsed, cut at a cancel or a restart."""
        if self.start is None or self.end is None:
            return None
        end = min(self.end, now)
        if self.halted_at is not None:
            end = min(end, self.halted_at)
        return (self.start, end) if end > self.start else None

    def updated_at(self, now: float) -> float:
        moments = [self.created_at, self.submitted_at]
        if self.start is not None and self.start <= now:
            moments.append(self.start)
        if self.end is not None and self.end <= now:
            moments.append(self.end)
        if self.halted_at is not None:
            moments.append(self.halted_at)
        return max(moment for moment in moments if moment <= now) if moments else now

    def finished_at(self, now: float) -> float:
        if self.halted_at is not None:
            return self.halted_at
        if self.end is not None and self.end <= now:
            return self.end
        return now

    def counts(self, now: float) -> tuple[int, int, int]:
        """(pending, completed, failed) for the job's status right now."""
        status = self.status(now)
        total = len(self.inputs)
        if status in ("COMPLETE", "FAILED"):
            failed = len(self.failed_sources)
            return 0, total - failed, failed
        if status == "CANCELED":
            return 0, 0, 0
        return total, 0, 0

    def input_bytes(self) -> int:
        return sum(digest.size for values in self.inputs.values() for digest in values.values())
