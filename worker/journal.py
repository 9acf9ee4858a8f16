"""A small crash-safe journal (sqlite in WAL mode) that makes a redelivered request resume, not restart."""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    key          TEXT PRIMARY KEY,
    job_id       TEXT,
    submits      INTEGER NOT NULL DEFAULT 0,
    deliveries   INTEGER NOT NULL DEFAULT 0,
    started_at   REAL NOT NULL,
    reply        BLOB,
    updated_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_updated ON requests (updated_at);
"""


@dataclass(frozen=True, slots=True)
class JournalEntry:
    key: str
    job_id: str | None
    submits: int
    deliveries: int
    started_at: float
    reply: bytes | None


class Journal:
    """Request key → edge job id, submission count, delivery count and the final reply, until expiry.

    One connection shared by the worker threads behind a lock: every write is a single short statement, and
    WAL with synchronous=NORMAL keeps each commit durable against a process crash (the failure we guard).
    """

    def __init__(self, path: Path, *, retention_s: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._retention_s = retention_s
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    @classmethod
    def in_state_dir(cls, state_dir: str, *, retention_s: float) -> Journal:
        return cls(Path(state_dir) / "journal.sqlite3", retention_s=retention_s)

    def get(self, key: str) -> JournalEntry | None:
        with self._lock:
            row = self._db.execute(
                "SELECT key, job_id, submits, deliveries, started_at, reply FROM requests WHERE key = ?", (key,)
            ).fetchone()
        if row is None:
            return None
        return JournalEntry(row[0], row[1], row[2], row[3], row[4], row[5])

    def record_delivery(self, key: str) -> JournalEntry:
        """Count one more delivery of this key (creating the entry) and return the entry as it now stands."""
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO requests (key, deliveries, started_at, updated_at) VALUES (?, 1, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET deliveries = deliveries + 1, updated_at = excluded.updated_at",
                (key, now, now),
            )
            row = self._db.execute(
                "SELECT key, job_id, submits, deliveries, started_at, reply FROM requests WHERE key = ?", (key,)
            ).fetchone()
        return JournalEntry(row[0], row[1], row[2], row[3], row[4], row[5])

    def record_job(self, key: str, job_id: str) -> None:
        """The edge accepted a job for this key: from now on a redelivery resumes it."""
        with self._lock:
            self._db.execute(
                "UPDATE requests SET job_id = ?, submits = submits + 1, updated_at = ? WHERE key = ?",
                (job_id, time.time(), key),
            )

    def record_reply(self, key: str, reply: bytes) -> None:
        """The final reply: a redelivery re-publishes it instead of doing the work again."""
        with self._lock:
            self._db.execute("UPDATE requests SET reply = ?, updated_at = ? WHERE key = ?", (reply, time.time(), key))

    def forget(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM requests WHERE key = ?", (key,))

    def expire(self, *, now: float | None = None, unfinished_after_s: float = 7200.0) -> int:
        """Drop finished entries older than the retention, and abandoned unfinished ones; returns how many."""
        now = time.time() if now is None else now
        cutoff = now - self._retention_s
        # An unfinished entry may belong to a job still running: keep it at least as long as a delivery can
        # stay unacknowledged, whatever the retention says.
        stale = now - max(self._retention_s, unfinished_after_s)
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM requests WHERE (reply IS NOT NULL AND updated_at < ?) OR updated_at < ?", (cutoff, stale)
            )
        return cursor.rowcount

    def count(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM requests").fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
